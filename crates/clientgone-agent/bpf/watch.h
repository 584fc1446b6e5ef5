/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The one event the BPF side sends to user space. Its byte layout is read by
 * src/watch/event.rs, field by field at these offsets; change both together.
 */
#ifndef CG_WATCH_H
#define CG_WATCH_H

/* Bytes captured from the start of each read and write: a request or response
 * head longer than this cannot be parsed (the connection is left out, counted). */
#define CG_CAP 1024
/* Bytes captured from the end of each read and write: where a chunked body's
 * last chunk ("0\r\n\r\n") shows. */
#define CG_TAIL 8
/* A head starts only at the first transfer after the other direction moved,
 * and is followed across reads or writes up to this many bytes (the agent's
 * longest head): beyond them in one direction, only lengths and tails are
 * captured. */
#define CG_RUN_CAP 16384
/* An HTTP/2 connection (its client's first bytes are the preface) needs every
 * frame header and header block, not DATA payloads: its transfers are walked
 * frame by frame, and what the RECV/SEND event does not hold of those is sent
 * in CG_MORE events of up to CG_CAP bytes right after it — up to this many
 * bytes a transfer; user space skips a connection where more were needed. */
#define CG_H2_CAP 16384

enum cg_kind {
	CG_OPEN = 1,  /* a connection was established on a watched port */
	CG_RECV = 2,  /* the server read len bytes */
	CG_SEND = 3,  /* the server wrote len bytes */
	CG_STATE = 4, /* the TCP state changed: old_state -> new_state, len = sk_err */
	CG_RESET = 5, /* an RST arrived */
	CG_ADOPT = 6, /* an established connection seen for the first time (it
		       * predates the agent): unacked = its socket's inode, 0 if
		       * orphaned */
	CG_TLS = 7,   /* the connection's TLS library is probed: from now on its
		       * RECV/SEND events are plaintext (CG_F_TLS), its ciphertext
		       * is not reported; flags CG_F_HANDSHAKE when the handshake
		       * completed, CG_F_EXPLICIT when an SSL_do_handshake call
		       * returned without completing it */
	CG_TLS_WRITING = 8, /* an SSL_write moved its first bytes to the socket:
			     * its plaintext SEND comes at the call's return */
	CG_MORE = 9,  /* more bytes of the HTTP/2 transfer just reported: len is
		       * the transfer's, unacked the offset of data in it; the
		       * bytes between pieces are DATA payloads passed over */
};

/* The bytes moved but none were captured: sendfile, splice, io_uring, or a
 * system call the buffer of which is not known. */
#define CG_F_NOBUF 1
/* RECV/SEND: plaintext, as the TLS library returned it or was given it. */
#define CG_F_TLS 2
/* RECV/SEND, on a connection's first: the process has called a probed TLS
 * library (so a TLS connection of it that is not reported as CG_TLS could not
 * be tied to its SSL object). */
#define CG_F_SSL_PROC 4
/* CG_TLS: the handshake completed. */
#define CG_F_HANDSHAKE 8
/* CG_TLS: the server runs the handshake itself (SSL_do_handshake), which has
 * not completed yet. */
#define CG_F_EXPLICIT 16
/* RECV/SEND of an HTTP/2 connection: CG_MORE pieces follow. */
#define CG_F_MORE 32
/* CG_MORE: the transfer's last piece (possibly empty). */
#define CG_F_LAST 64

struct cg_event {
	__u64 conn;       /*  0: connection id, given at CG_OPEN */
	__u64 ts_ns;      /*  8: CLOCK_MONOTONIC */
	__u32 seq;        /* 16: OPEN/ADOPT/STATE/RESET and plaintext SEND: the
			   * socket's write_seq (the sequence number after the
			   * last byte written); 0 elsewhere */
	__s32 len;        /* 20: RECV/SEND bytes; STATE sk_err */
	__u32 unacked;    /* 24: STATE/RESET: bytes written the peer never acknowledged */
	__u16 port;       /* 28: the watched local port */
	__u8 kind;        /* 30: enum cg_kind */
	__u8 flags;       /* 31: CG_F_* */
	__u8 old_state;   /* 32 */
	__u8 new_state;   /* 33 */
	__u16 cap_len;    /* 34: bytes in data, from the start of the transfer */
	__u16 tail_len;   /* 36: bytes in tail, the last ones of the transfer; 0 when
			   * data holds the whole transfer (its last bytes are the tail) */
	__u16 pad;        /* 38 */
	__u8 tail[CG_TAIL]; /* 40 */
	__u8 data[3 * CG_CAP]; /* 48: cap_len bytes are sent (never more than CG_CAP; the
				  * room beyond is for the verifier's bounds) */
};

#define CG_HEADER_LEN 48

/* Per-CPU counters (map "counters"). */
enum cg_counter {
	CG_LOST = 0, /* events the ring buffer had no room for */
	CG_COUNTERS = 1,
};

#endif
