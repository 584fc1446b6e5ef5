// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * clientgone watch: the kernel side. It only reports what each watched TCP
 * connection did — established, bytes read and written (with the first and
 * last bytes of each transfer), state changes, resets — into one ring buffer.
 * Every HTTP decision (requests, phases, causes) is made in user space
 * (src/watch/), from these events alone.
 *
 * Only tracepoints are used: they are the kernel's stable interface, and the
 * machines this runs on may have no kprobes. All are BTF-typed (tp_btf), so no
 * tracefs mount is needed.
 *
 * Two ways to find the user buffer of a transfer, chosen by user space at load
 * (`--capture`): "socket" reads it from the registers the thread entered the
 * kernel with (bpf_task_pt_regs), inside the socket tracepoints themselves;
 * "syscall" remembers it at sys_enter. The second costs every system call of
 * every process on the host (attaching to sys_enter puts them all on the slow
 * path), so it is only the fallback for kernels without bpf_task_pt_regs.
 *
 * TLS: for servers using OpenSSL, uprobes on its read, write and handshake
 * functions (attached by user space to each library file) give the plaintext;
 * the socket programs, which fire inside those calls on the same thread, tie
 * each SSL object to its connection, whose ciphertext is then not reported.
 *
 * Rebuild with bpf/build.sh (clang -target bpf); the object is committed.
 */
#include "cg_vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "watch.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define TCP_ESTABLISHED 1
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define MSG_PEEK 2
#define MAX_IOV 4
#define IPPROTO_TCP 6
#define PF_IO_WORKER 0x00000010
#define PF_KTHREAD 0x00200000

/* Bounds a length for the verifier. The empty asm hides the value from clang,
 * which would otherwise drop the mask as redundant and leave the verifier
 * without a bound. */
static __always_inline __u32 bounded(__u32 v, __u32 mask)
{
	barrier_var(v);
	return v & mask;
}

/* The ports whose accepted connections are watched (filled by user space). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} ports SEC(".maps");

/* Where one direction of an HTTP/2 connection is in its frames, carried
 * from one transfer to the next. */
struct h2_frames {
	__u32 left; /* payload bytes of the current frame still to come; 0: a
		     * frame header is next */
	__u8 hdr[4]; /* the header's first bytes (length, type) read so far */
	__u8 have;   /* header bytes read so far */
	__u8 data;   /* the current payload is DATA's: not sent */
	__u8 pad[2];
};

/* What is known of a watched socket; lives and dies with the socket, so a
 * reused struct sock address never inherits another connection's id. */
struct conn_state {
	__u64 id;
	/* Bytes moved in last_dir since the direction last turned: a head can
	 * only be in the first CG_RUN_CAP of them. */
	__u32 run;
	__u16 port;
	__u8 last_dir;
	/* MODE_PLAIN, or MODE_TLS once an OpenSSL call was seen moving its
	 * bytes: its data events then come from the uprobes, as plaintext. */
	__u8 mode;
	/* MODE_TLS: the SSL object last tied to it, and its process (the key of
	 * its ssl_conns entry, deleted when the connection closes). */
	__u64 ssl;
	__u32 tgid;
	/* H2_UNKNOWN until the client's first bytes arrive; H2_YES when they
	 * were the HTTP/2 preface: its transfers are then walked frame by
	 * frame (fr: the client's, then the server's). A server may write first
	 * (an HTTP/2 server's SETTINGS, say): the client's first read decides,
	 * not the connection's. H2_LOST once a walk could not follow. */
	__u8 h2;
	__u8 pad[3];
	struct h2_frames fr[2];
};

enum conn_mode { MODE_PLAIN = 0, MODE_TLS = 1 };
enum h2_state { H2_UNKNOWN = 0, H2_YES = 1, H2_NO = 2, H2_LOST = 3 };

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct conn_state);
} conns SEC(".maps");

/* The user buffer of the read or write system call the current thread is in. */
enum call_kind { CALL_NONE = 0, CALL_BUF = 1, CALL_IOV = 2, CALL_MSG = 3, CALL_NOBUF = 4 };
enum call_dir { DIR_NONE = 0, DIR_RECV = 1, DIR_SEND = 2, DIR_ANY = 3 };

struct call {
	__u64 arg; /* buffer, iovec array or msghdr */
	__u64 count; /* iovec count (CALL_IOV) */
	__u8 kind;
	__u8 dir;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct call);
} calls SEC(".maps");

/* Size set by user space (--ring-size). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} events SEC(".maps");

/* Connections that lost an event: user space leaves them out of the request
 * metrics. LRU, so recording a loss never fails for want of room. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} lost_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CG_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* One event is built here (it is larger than the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cg_event);
} scratch SEC(".maps");

__u64 next_conn_id = 0;

/* Starts an event in `e`: every field zero but these. */
static __always_inline void fill_header(struct cg_event *e, __u64 id, __u16 port, __u8 kind)
{
	e->conn = id;
	e->ts_ns = bpf_ktime_get_ns();
	e->seq = 0;
	e->len = 0;
	e->unacked = 0;
	e->port = port;
	e->kind = kind;
	e->flags = 0;
	e->old_state = 0;
	e->new_state = 0;
	e->cap_len = 0;
	e->tail_len = 0;
	e->pad = 0;
}

static __always_inline struct cg_event *new_event(__u64 id, __u16 port, __u8 kind)
{
	__u32 zero = 0;
	struct cg_event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (e)
		fill_header(e, id, port, kind);
	return e;
}

/* Sends the event; a full ring is counted, and the connection marked, never
 * silent: user space must not build requests from a stream with a hole. */
static __always_inline void send(struct cg_event *e, __u64 flags)
{
	__u64 size = CG_HEADER_LEN + bounded(e->cap_len, 2 * CG_CAP - 1);
	if (size > sizeof(*e))
		return;
	if (bpf_ringbuf_output(&events, e, size, flags) == 0)
		return;
	__u32 key = CG_LOST;
	__u64 *lost = bpf_map_lookup_elem(&counters, &key);
	if (lost)
		*lost += 1;
	__u8 one = 1;
	bpf_map_update_elem(&lost_conns, &e->conn, &one, BPF_ANY);
}

/* The sequence number after the last byte the server has written to the
 * socket (tcp_sock.write_seq): told with every SEND and every state change,
 * so user space knows whether a client's FIN came after bytes whose SEND
 * event is still on its way (the client can read a response and leave before
 * the tracepoint after the write has fired). */
static __always_inline __u32 write_seq(const struct sock *sk)
{
	return BPF_CORE_READ((const struct tcp_sock *)sk, write_seq);
}

static __always_inline __u32 unacked(const struct sock *sk)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	return BPF_CORE_READ(tp, write_seq) - BPF_CORE_READ(tp, snd_una);
}

/* Copies up to CG_CAP bytes from the start of a contiguous user buffer, and
 * its last CG_TAIL bytes unless the start already holds the whole transfer
 * (user space takes the tail from it: one helper call less per small one). */
static __always_inline void capture_buf(struct cg_event *e, __u64 buf, __u32 len, int head)
{
	__u32 n = !head ? 0 : len < CG_CAP ? len : CG_CAP;
	if (n > 0 && bpf_probe_read_user(e->data, bounded(n, 2 * CG_CAP - 1), (void *)buf) == 0)
		e->cap_len = n;
	if (e->cap_len == len)
		return;
	__u32 t = len < CG_TAIL ? len : CG_TAIL;
	if (t > 0 && bpf_probe_read_user(e->tail, bounded(t, 2 * CG_TAIL - 1),
					 (void *)(buf + len - t)) == 0)
		e->tail_len = t;
}

/* The same over an iovec array (readv, writev, recvmsg, sendmsg): the head is
 * copied across up to MAX_IOV pieces; the tail comes from the piece holding the
 * transfer's last byte. */
static __always_inline void capture_iov(struct cg_event *e, __u64 iov, __u64 count, __u32 len,
					int head)
{
	__u32 copied = 0, seen = 0;
	/* The entries that can matter, in one read of user memory. */
	struct cg_iovec vs[MAX_IOV];
	__u32 n = count < MAX_IOV ? count : MAX_IOV;
	__u32 size = n * sizeof(vs[0]);
	barrier_var(size);
	if (size == 0 || size > sizeof(vs) || bpf_probe_read_user(vs, size, (void *)iov))
		return;
	for (int i = 0; i < MAX_IOV; i++) {
		if (i >= n || seen >= len)
			break;
		struct cg_iovec v = vs[i];
		__u32 used = v.len < len - seen ? v.len : len - seen;
		if (head && copied == seen && copied < CG_CAP) {
			__u32 n = used < CG_CAP - copied ? used : CG_CAP - copied;
			if (n > 0 && bpf_probe_read_user(e->data + bounded(copied, CG_CAP - 1),
							 bounded(n, 2 * CG_CAP - 1), (void *)v.base))
				break;
			copied += n;
		}
		seen += used;
		if (seen == len && used > 0 && copied < len) {
			__u32 t = used < CG_TAIL ? used : CG_TAIL;
			if (bpf_probe_read_user(e->tail, bounded(t, 2 * CG_TAIL - 1),
						(void *)(v.base + used - t)) == 0)
				e->tail_len = t;
		}
	}
	e->cap_len = copied;
}

/* The local port of a TCP socket, or 0 for any other socket. */
static __always_inline __u16 tcp_port(const struct sock *sk)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	return bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
}

/* What is known of a watched socket; for an established one on a watched port
 * seen for the first time (open before the agent started, or its open event
 * lost), its state starts now and user space is told (CG_ADOPT) before the
 * event that found it. */
static __always_inline struct conn_state *watched(struct sock *sk)
{
	struct conn_state *cs = bpf_sk_storage_get(&conns, sk, 0, 0);
	if (cs)
		return cs;
	__u16 port = tcp_port(sk);
	if (!port || !bpf_map_lookup_elem(&ports, &port))
		return 0;
	__u8 state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (state != TCP_ESTABLISHED && state != TCP_CLOSE_WAIT)
		return 0;
	cs = bpf_sk_storage_get(&conns, sk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!cs)
		return 0;
	/* Two CPUs may find it at once: one id wins, one CG_ADOPT is sent. */
	__u64 id = __sync_fetch_and_add(&next_conn_id, 1) + 1;
	if (__sync_val_compare_and_swap(&cs->id, 0, id) != 0)
		return cs;
	cs->port = port;
	struct cg_event *e = new_event(cs->id, cs->port, CG_ADOPT);
	if (!e)
		return cs;
	e->seq = write_seq(sk);
	struct socket *sock = BPF_CORE_READ(sk, sk_socket);
	if (sock)
		e->unacked = BPF_CORE_READ((struct socket_alloc *)sock, vfs_inode.i_ino);
	send(e, BPF_RB_NO_WAKEUP);
	return cs;
}

/* Whether a transfer of `len` bytes in `dir` may hold a head: it is within
 * the first CG_RUN_CAP bytes since the direction last turned. */
static __always_inline int head_run(__u32 *run, __u8 *last_dir, __u8 dir, __u32 len)
{
	if (*last_dir != dir) {
		*last_dir = dir;
		*run = 0;
	}
	int head = *run < CG_RUN_CAP;
	if (head)
		*run += len;
	return head;
}

/* ---- HTTP/2: frame walk ------------------------------------------------ */

/* Whether an event's bytes begin with the HTTP/2 client preface ("PRI * ..."). */
static __always_inline int starts_preface(const struct cg_event *e)
{
	return e->cap_len >= 4 && e->data[0] == 'P' && e->data[1] == 'R' && e->data[2] == 'I' &&
	       e->data[3] == ' ';
}

#define H2_PREFACE_LEN 24
#define H2_FRAME_HEADER 9
#define H2_DATA 0

/* Decides, at the client's first bytes (`e`, a RECV), whether the connection
 * speaks HTTP/2; returns whether it does (and its frames are walked). The
 * client's bytes start with the preface, which is not a frame. */
static __always_inline int h2_decided(__u8 *h2, struct h2_frames *fr, const struct cg_event *e)
{
	if (*h2 == H2_UNKNOWN && e->kind == CG_RECV) {
		*h2 = starts_preface(e) ? H2_YES : H2_NO;
		if (*h2 == H2_YES) {
			fr[0].left = H2_PREFACE_LEN;
			fr[0].data = 0;
		}
	}
	return *h2 == H2_YES;
}

/* Iovecs of one transfer an HTTP/2 walk reads at most (the kernel's own
 * limit, UIO_MAXIOV): gRPC's C core writes a frame's header, its header block
 * and each message in pieces of their own, hundreds a sendmsg. */
#define CG_H2_IOV 1024
/* Steps of one walk at most: an iovec, a frame header, a run of payload or a
 * piece each; a 4 MiB write of 16 KiB DATA frames is some 600. */
#define CG_H2_STEPS 8192

/* An HTTP/2 transfer being walked frame by frame: where its bytes are (a
 * contiguous buffer, or an iovec array walked one piece of user memory at a
 * time), the direction's frame state, and the piece being filled. */
struct more_walk {
	__u64 id;
	__u64 buf;   /* a contiguous buffer, or 0 */
	__u64 iov;   /* else an iovec array of count entries */
	__u64 count;
	__u64 base;  /* the part of the current iovec not yet walked */
	struct h2_frames fr; /* the direction's frames, carried across transfers */
	__u32 left;
	__u32 iov_i; /* the next iovec to read */
	__u32 len;   /* the transfer's length */
	__u32 start; /* the first byte not in the RECV/SEND event */
	__u32 off;   /* the next byte to walk */
	__u32 piece; /* bytes in the piece being filled */
	__u32 copied; /* bytes sent in pieces (at most CG_H2_CAP) */
	__u16 port;
	__u8 emit;   /* pieces are sent (the RECV/SEND event said CG_F_MORE) */
	__u8 lost;   /* the walk could not follow the frames */
};

/* The walk lives in a map, not on the stack: read back from memory at each
 * step, its fields are unknown to the verifier, so every step verifies alike
 * and the loop's verification converges at once (on the stack, each step's
 * exact offsets would be a new state to walk). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct more_walk);
} walks SEC(".maps");

/* Sends the piece being filled (its bytes in the per-CPU scratch event);
 * `last` marks the transfer's final piece, sent even when empty so that user
 * space knows the transfer is whole. */
static __always_inline void more_flush(struct more_walk *w, int last)
{
	__u32 zero = 0;
	struct cg_event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e || !w->emit || (w->piece == 0 && !last))
		return;
	if (w->piece == 0) {
		fill_header(e, w->id, w->port, CG_MORE);
		e->len = w->len;
		e->unacked = w->off;
	}
	e->cap_len = w->piece;
	if (last)
		e->flags |= CG_F_LAST;
	send(e, BPF_RB_NO_WAKEUP);
	w->copied += w->piece;
	w->piece = 0;
}

/* One step of the walk: a bpf_loop callback, so the verifier walks one step,
 * not every frame and iovec. A step reads the next iovec, or moves through
 * the next run of bytes of one kind: a frame header (read, and sent), a
 * payload to send (every frame's but DATA's, while the transfer's
 * CG_H2_CAP lasts) or one to pass over (DATA's: user space needs only its
 * length and flags, which the header holds). Bytes the RECV/SEND event
 * already holds are walked, never sent again. Returns 1 when the walk is
 * over. */
static long more_step(__u32 i, void *arg)
{
	__u32 zero = 0;
	struct more_walk *w = bpf_map_lookup_elem(&walks, &zero);
	if (!w)
		return 1;
	if (w->off >= w->len) {
		more_flush(w, 1);
		return 1;
	}
	if (w->left == 0) {
		if (w->buf) {
			/* A contiguous buffer is one iovec. */
			if (w->iov_i++ > 0)
				goto lost;
			w->base = w->buf;
			w->left = w->len;
			return 0;
		}
		if (w->iov_i >= w->count || w->iov_i >= CG_H2_IOV)
			goto lost;
		struct cg_iovec v;
		if (bpf_probe_read_user(&v, sizeof(v), (void *)(w->iov + w->iov_i * sizeof(v))))
			goto lost;
		w->iov_i++;
		w->base = v.base;
		w->left = v.len < w->len - w->off ? v.len : w->len - w->off;
		return 0;
	}
	int header = w->fr.left == 0;
	__u32 k = header ? H2_FRAME_HEADER - w->fr.have : w->fr.left;
	if (k > w->left)
		k = w->left;
	/* Frame headers and every payload but DATA's are sent, while the
	 * transfer's CG_H2_CAP lasts. */
	int send_it = (header || !w->fr.data) && w->copied + w->piece < CG_H2_CAP;
	if (w->off < w->start) {
		if (k > w->start - w->off)
			k = w->start - w->off;
	} else if (send_it) {
		if (k > CG_CAP - w->piece)
			k = CG_CAP - w->piece;
		if (k > CG_H2_CAP - w->copied - w->piece)
			k = CG_H2_CAP - w->copied - w->piece;
		struct cg_event *e = bpf_map_lookup_elem(&scratch, &zero);
		if (!e)
			return 1;
		if (w->piece == 0) {
			fill_header(e, w->id, w->port, CG_MORE);
			e->len = w->len;
			e->unacked = w->off;
		}
		if (bpf_probe_read_user(e->data + bounded(w->piece, CG_CAP - 1),
					bounded(k, 2 * CG_CAP - 1), (void *)w->base))
			goto lost;
		w->piece += k;
	} else {
		/* Passed over: the piece being filled ends here (pieces are
		 * contiguous). */
		more_flush(w, 0);
	}
	if (header) {
		/* The length (3 bytes) and type (1) are all the walk needs. */
		__u8 have = w->fr.have;
		if (have < 4) {
			__u32 n = k < 4u - have ? k : 4u - have;
			if (bpf_probe_read_user(w->fr.hdr + bounded(have, 3), bounded(n, 7),
						(void *)w->base))
				goto lost;
		}
		w->fr.have = have + k;
		if (w->fr.have >= H2_FRAME_HEADER) {
			w->fr.have = 0;
			w->fr.left = ((__u32)w->fr.hdr[0] << 16) | ((__u32)w->fr.hdr[1] << 8) |
				     w->fr.hdr[2];
			w->fr.data = w->fr.hdr[3] == H2_DATA;
		}
	} else {
		w->fr.left -= k;
	}
	w->base += k;
	w->left -= k;
	w->off += k;
	if (w->piece >= CG_CAP)
		more_flush(w, 0);
	return 0;
lost:
	w->lost = 1;
	more_flush(w, 1);
	return 1;
}

/* Frames of a transfer the fast walk follows at most. */
#define CG_H2_FAST_FRAMES 16

/* The walk of a transfer the RECV/SEND event `e` holds whole (at most
 * CG_CAP bytes): its frame headers are read where they already are, in the
 * event, with no copy from user memory and no bpf_loop. Returns 0, leaving
 * `fr` as it was, when it cannot (a frame header cut by the transfer's
 * start or end, or more frames than CG_H2_FAST_FRAMES): the full walk then
 * runs. */
static __always_inline int h2_walk_captured(struct h2_frames *fr, const struct cg_event *e,
					    __u32 len)
{
	if (fr->have != 0 || len > CG_CAP)
		return 0;
	if (fr->left >= len) {
		fr->left -= len;
		return 1;
	}
	__u32 off = fr->left;
	for (int i = 0; i < CG_H2_FAST_FRAMES; i++) {
		if (off == len) {
			fr->left = 0;
			return 1;
		}
		if (off + H2_FRAME_HEADER > len)
			return 0;
		__u32 o = bounded(off, CG_CAP - 1);
		__u32 flen = ((__u32)e->data[o] << 16) | ((__u32)e->data[o + 1] << 8) |
			     e->data[o + 2];
		__u8 type = e->data[o + 3];
		off += H2_FRAME_HEADER + flen;
		if (off > len) {
			fr->left = off - len;
			fr->data = type == H2_DATA;
			return 1;
		}
	}
	return 0;
}

/* Walks an HTTP/2 connection's transfer of `len` bytes frame by frame,
 * carrying the direction's frame state `fr` across transfers. With `emit`
 * (the RECV/SEND event holds only its first `start` bytes) the rest of what
 * user space needs is sent in CG_MORE pieces of up to CG_CAP bytes right
 * after it: every frame header and every payload but DATA's, up to
 * CG_H2_CAP bytes a transfer; the last piece is flagged CG_F_LAST. `buf` is
 * a contiguous buffer, or (iov, count) an iovec array. Returns 0 when the
 * frames could not be followed (user space then finds bytes missing outside
 * a DATA payload and leaves the connection out, counted). */
static __always_inline int h2_walk(struct h2_frames *fr, __u64 id, __u16 port, __u32 len,
				   __u32 start, int emit, __u64 buf, __u64 iov, __u64 count)
{
	__u32 zero = 0;
	if (!emit && start == len) {
		struct cg_event *e = bpf_map_lookup_elem(&scratch, &zero);
		if (e && e->cap_len == len && h2_walk_captured(fr, e, len))
			return 1;
	}
	struct more_walk *w = bpf_map_lookup_elem(&walks, &zero);
	if (!w)
		return 0;
	w->id = id;
	w->buf = buf;
	w->iov = iov;
	w->count = count;
	w->base = 0;
	w->fr = *fr;
	w->left = 0;
	w->iov_i = 0;
	w->len = len;
	w->start = start;
	w->off = 0;
	w->piece = 0;
	w->copied = 0;
	w->port = port;
	w->emit = emit;
	w->lost = 0;
	bpf_loop(CG_H2_STEPS, more_step, 0, 0);
	if (w->off < w->len && !w->lost) {
		/* Out of steps. */
		w->lost = 1;
		more_flush(w, 1);
	}
	*fr = w->fr;
	return !w->lost;
}

/* After a transfer of an HTTP/2 connection (`h2` H2_YES) of `len` bytes, of
 * which the event `e` holds the first cap_len: flags the event CG_F_MORE if
 * pieces follow. Returns whether a walk is to follow the event. */
static __always_inline int h2_more(struct cg_event *e, __u32 len, int can_walk)
{
	if (!can_walk)
		return 0;
	if (e->cap_len < len)
		e->flags |= CG_F_MORE;
	return 1;
}

/* ---- TLS (OpenSSL) ---------------------------------------------------- */

/* Which OpenSSL function a uprobe is attached to: its attach cookie. */
enum ssl_fn {
	SSL_FN_READ = 1,      /* int SSL_read(SSL *, void *buf, int num): bytes read */
	SSL_FN_READ_EX = 2,   /* int SSL_read_ex(SSL *, void *buf, size_t, size_t *readbytes): 1 */
	SSL_FN_WRITE = 3,     /* int SSL_write(SSL *, const void *buf, int num): bytes written */
	SSL_FN_WRITE_EX = 4,  /* int SSL_write_ex(SSL *, const void *, size_t, size_t *written): 1 */
	SSL_FN_HANDSHAKE = 5, /* int SSL_do_handshake(SSL *): 1 when complete */
	SSL_FN_READ_EARLY = 6, /* int SSL_read_early_data(SSL *, void *, size_t, size_t *):
				* 1 or 2 with bytes read (nginx with ssl_early_data) */
	SSL_FN_PEEK = 7,      /* int SSL_peek(SSL *, void *, int): no bytes consumed */
	SSL_FN_PEEK_EX = 8,   /* int SSL_peek_ex(SSL *, void *, size_t, size_t *) */
};

/* The OpenSSL call a thread is in, from its uprobe to its uretprobe. */
struct ssl_call {
	__u64 ssl;
	__u64 buf;
	__u64 count_at; /* the _ex functions' byte count pointer */
	__u8 fn;
	__u8 told; /* CG_TLS_WRITING was sent for this call */
};

/* By thread (pid_tgid). LRU: a thread that died inside a call (or one entered
 * before the probes were attached) leaves no entry for ever. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct ssl_call);
} ssl_calls SEC(".maps");

/* An SSL object: its address in its process. */
struct ssl_key {
	__u64 ssl;
	__u32 tgid;
	__u32 pad;
};

/* The watched connection an SSL object was seen moving bytes on, and its
 * plaintext's own head run. LRU: SSL objects are freed without a word. */
struct ssl_conn {
	__u64 id;
	__u32 run;
	__u16 port;
	__u8 last_dir;
	__u8 h2; /* enum h2_state, as conn_state's, for the plaintext */
	struct h2_frames fr[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ssl_key);
	__type(value, struct ssl_conn);
} ssl_conns SEC(".maps");

/* The processes that called a probed OpenSSL function (tgid). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} ssl_procs SEC(".maps");

/* A transfer on a watched socket: if the thread is inside an OpenSSL call,
 * the bytes are that SSL object's records — the object is tied to this
 * connection (kept up to date: an SSL object may be reused for another), and
 * the connection switches to plaintext from the uprobes (user space told once,
 * CG_TLS). Returns whether the transfer is ciphertext, not to be reported:
 * inside a call, or on a connection already known to be TLS (a close_notify
 * written by SSL_shutdown, say).
 *
 * The first bytes an SSL_write sends are told (CG_TLS_WRITING): its plaintext
 * is reported at the call's return, which a client that read the response and
 * left at once can beat (the writer preempted in between); user space then
 * waits for that plaintext before it decides the client broke off. */
static __always_inline int tls_transfer(struct conn_state *cs, int sent)
{
	__u64 tid = bpf_get_current_pid_tgid();
	struct ssl_call *call = bpf_map_lookup_elem(&ssl_calls, &tid);
	if (!call)
		return cs->mode == MODE_TLS;
	struct ssl_key key = { .ssl = call->ssl, .tgid = tid >> 32 };
	struct ssl_conn *sc = bpf_map_lookup_elem(&ssl_conns, &key);
	if (!sc || sc->id != cs->id) {
		struct ssl_conn fresh = { .id = cs->id, .port = cs->port };
		bpf_map_update_elem(&ssl_conns, &key, &fresh, BPF_ANY);
		cs->ssl = key.ssl;
		cs->tgid = key.tgid;
	}
	if (cs->mode != MODE_TLS) {
		cs->mode = MODE_TLS;
		struct cg_event *e = new_event(cs->id, cs->port, CG_TLS);
		if (e)
			send(e, BPF_RB_NO_WAKEUP);
	}
	if (sent > 0 && !call->told &&
	    (call->fn == SSL_FN_WRITE || call->fn == SSL_FN_WRITE_EX)) {
		call->told = 1;
		struct cg_event *e = new_event(cs->id, cs->port, CG_TLS_WRITING);
		if (e)
			send(e, BPF_RB_NO_WAKEUP);
	}
	return 1;
}

/* A read or write on a watched socket: how many bytes, and what they began
 * and ended with, from the user buffer `c` names. Bytes are copied only where
 * a head can be (the first CG_RUN_CAP bytes after the direction turned); the
 * tail always. */
static __always_inline int data_event(struct sock *sk, int ret, __u8 kind, __u8 dir,
				      const struct call *c)
{
	if (!sk)
		return 0;
	struct conn_state *cs = watched(sk);
	if (!cs)
		return 0;
	if (tls_transfer(cs, kind == CG_SEND ? ret : 0))
		return 0;
	/* The connection's first transfer: say whether its process uses a
	 * probed OpenSSL (a TLS connection of it that was not tied is then
	 * "tls_unmapped", not "tls"). */
	__u8 flags = 0;
	if (cs->last_dir == DIR_NONE) {
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		if (bpf_map_lookup_elem(&ssl_procs, &tgid))
			flags = CG_F_SSL_PROC;
	}
	int head = head_run(&cs->run, &cs->last_dir, dir, ret) || cs->h2 == H2_YES;
	struct cg_event *e = new_event(cs->id, cs->port, kind);
	if (!e)
		return 0;
	e->len = ret;
	e->flags = flags;
	if (kind == CG_SEND)
		e->seq = write_seq(sk);
	__u64 buf = 0, iov = 0, count = 0;
	if (c && c->dir == dir && c->kind != CALL_NOBUF) {
		if (c->kind == CALL_BUF) {
			buf = c->arg;
			capture_buf(e, buf, ret, head);
		} else if (c->kind == CALL_IOV) {
			iov = c->arg;
			count = c->count;
			capture_iov(e, iov, count, ret, head);
		} else if (c->kind == CALL_MSG) {
			struct cg_user_msghdr m;
			if (bpf_probe_read_user(&m, sizeof(m), (void *)c->arg) == 0) {
				iov = m.msg_iov;
				count = m.msg_iovlen;
				capture_iov(e, iov, count, ret, head);
			}
		}
	}
	if (e->cap_len == 0)
		e->flags |= CG_F_NOBUF;
	int walk = h2_more(e, ret, h2_decided(&cs->h2, cs->fr, e));
	__u32 captured = e->cap_len;
	int emit = e->flags & CG_F_MORE;
	send(e, BPF_RB_NO_WAKEUP);
	/* A transfer without its buffer (sendfile, say) cannot be walked. */
	if (walk && !((buf || iov) && h2_walk(&cs->fr[dir == DIR_SEND], cs->id, cs->port, ret,
					       captured, emit, buf, iov, count)))
		cs->h2 = H2_LOST;
	return 0;
}

/* A failed transfer (EAGAIN, EOF, an error) moves no bytes, but inside an
 * OpenSSL call it still ties the SSL object to its connection (a handshake's
 * first read that found nothing yet, say). */
static __always_inline int failed_transfer(struct sock *sk)
{
	struct conn_state *cs = sk ? bpf_sk_storage_get(&conns, sk, 0, 0) : 0;
	if (cs)
		tls_transfer(cs, 0);
	return 0;
}

/* What sys_enter remembered for this thread ("syscall" capture). One system
 * call, one transfer: a later transfer on this thread outside a known call
 * (io_uring's workers, say) must not reuse the buffer, so it is taken. */
static __always_inline int syscall_data_event(struct sock *sk, int ret, __u8 kind, __u8 dir)
{
	struct call *c = bpf_task_storage_get(&calls, bpf_get_current_task_btf(), 0, 0);
	struct call taken = {};
	if (c) {
		taken = *c;
		c->dir = DIR_NONE;
	}
	return data_event(sk, ret, kind, dir, c ? &taken : 0);
}

/* How system call `nr` names the user buffer of a socket transfer: its kind,
 * and in `dir` the direction it moves bytes in — DIR_ANY for the calls that move
 * them with no user buffer (sendfile, splice, recvmmsg, sendmmsg,
 * io_uring_enter), DIR_NONE for calls that move no socket bytes. The one table
 * both capture modes read. */
static __always_inline __u8 call_kind(long nr, __u8 *dir)
{
	switch (nr) {
	case 0:   /* read */
	case 45:  /* recvfrom */
		*dir = DIR_RECV;
		return CALL_BUF;
	case 1:   /* write */
	case 44:  /* sendto */
		*dir = DIR_SEND;
		return CALL_BUF;
	case 19:  /* readv */
	case 327: /* preadv2 */
		*dir = DIR_RECV;
		return CALL_IOV;
	case 20:  /* writev */
	case 328: /* pwritev2 */
		*dir = DIR_SEND;
		return CALL_IOV;
	case 47:  /* recvmsg */
		*dir = DIR_RECV;
		return CALL_MSG;
	case 46:  /* sendmsg */
		*dir = DIR_SEND;
		return CALL_MSG;
	case 40:  /* sendfile */
	case 275: /* splice */
	case 299: /* recvmmsg */
	case 307: /* sendmmsg */
	case 426: /* io_uring_enter */
		*dir = DIR_ANY;
		return CALL_NOBUF;
	default:
		*dir = DIR_NONE;
		return CALL_NONE;
	}
}

/* The user buffer from the registers the thread entered the kernel with
 * ("socket" capture): the socket tracepoints fire inside the read or write
 * system call, whose arguments are still in them. */
static __always_inline int regs_data_event(struct sock *sk, int ret, __u8 kind, __u8 dir)
{
	struct call c = { .kind = CALL_NOBUF, .dir = dir };
	struct task_struct *task = bpf_get_current_task_btf();
	/* io_uring's workers and kernel threads transfer for someone else: their
	 * registers name no buffer of this transfer. */
	if (!(task->flags & (PF_IO_WORKER | PF_KTHREAD))) {
		struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
		__u8 d;
		__u8 k = call_kind(regs->orig_ax, &d);
		/* Calls with no buffer (DIR_ANY) or no socket bytes: none. */
		if (d == dir) {
			c.kind = k;
			c.arg = regs->si;
			c.count = regs->dx;
		}
	}
	return data_event(sk, ret, kind, dir, &c);
}

/* Catches: which user buffer the thread's next socket read or write uses. The
 * socket tracepoints below say how many bytes moved but not where they are. */
SEC("tp_btf/sys_enter")
int BPF_PROG(cg_sys_enter, struct pt_regs *regs, long id)
{
	__u8 dir;
	__u8 kind = call_kind(id, &dir);
	if (dir == DIR_NONE)
		return 0;
	struct call *c = bpf_task_storage_get(&calls, bpf_get_current_task_btf(), 0,
					      BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!c)
		return 0;
	c->arg = regs->si;
	c->count = regs->dx;
	c->kind = kind;
	c->dir = dir;
	return 0;
}

/* Catches ("syscall" capture): every read from a watched socket (ret bytes),
 * in the reader's context. */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(cg_recv, struct sock *sk, int ret, int flags)
{
	/* EOF and errors show as state changes; a peek consumes nothing. */
	if (flags & MSG_PEEK)
		return 0;
	if (ret <= 0)
		return failed_transfer(sk);
	return syscall_data_event(sk, ret, CG_RECV, DIR_RECV);
}

/* Catches ("syscall" capture): every write to a watched socket, sendfile and
 * splice included. */
SEC("tp_btf/sock_send_length")
int BPF_PROG(cg_send, struct sock *sk, int ret, int flags)
{
	if (ret <= 0)
		return failed_transfer(sk);
	return syscall_data_event(sk, ret, CG_SEND, DIR_SEND);
}

/* Catches ("socket" capture): every read from a watched socket, after the
 * bytes reached the reader's buffer, with no system-call hook. */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(cg_recv_sock, struct sock *sk, int ret, int flags)
{
	if (flags & MSG_PEEK)
		return 0;
	if (ret <= 0)
		return failed_transfer(sk);
	return regs_data_event(sk, ret, CG_RECV, DIR_RECV);
}

/* Catches ("socket" capture): every write to a watched socket; the writer's
 * buffer still holds the bytes (the system call has not returned). */
SEC("tp_btf/sock_send_length")
int BPF_PROG(cg_send_sock, struct sock *sk, int ret, int flags)
{
	if (ret <= 0)
		return failed_transfer(sk);
	return regs_data_event(sk, ret, CG_SEND, DIR_SEND);
}

/* Catches: a connection established on a watched port (SYN_RECV -> ESTABLISHED,
 * in softirq), and every later state change of a watched one: the client's FIN
 * (-> CLOSE_WAIT, seen when it arrives, even if the server never reads again),
 * the server closing first (-> FIN_WAIT1), and the end (-> CLOSE, with sk_err
 * saying whether an RST or a timeout killed it). */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(cg_state, const struct sock *sk, int oldstate, int newstate)
{
	struct sock *s = (struct sock *)sk;
	struct conn_state *cs;
	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		__u16 port = s->__sk_common.skc_num;
		if (!bpf_map_lookup_elem(&ports, &port))
			return 0;
		cs = bpf_sk_storage_get(&conns, s, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (!cs)
			return 0;
		cs->id = __sync_fetch_and_add(&next_conn_id, 1) + 1;
		cs->port = port;
		struct cg_event *e = new_event(cs->id, cs->port, CG_OPEN);
		if (e) {
			e->seq = write_seq(s);
			send(e, BPF_RB_NO_WAKEUP);
		}
		return 0;
	}
	/* A connection that predates the agent is adopted at its end too, so
	 * that its close is counted with its reason. */
	cs = oldstate == TCP_ESTABLISHED || oldstate == TCP_CLOSE_WAIT
		     ? watched(s)
		     : bpf_sk_storage_get(&conns, s, 0, 0);
	if (!cs)
		return 0;
	/* Its SSL object, if any, is tied to nothing now: an SSL object reused
	 * for another connection is tied again by its first transfer. */
	if (newstate == TCP_CLOSE && cs->mode == MODE_TLS) {
		struct ssl_key key = { .ssl = cs->ssl, .tgid = cs->tgid };
		struct ssl_conn *sc = bpf_map_lookup_elem(&ssl_conns, &key);
		if (sc && sc->id == cs->id)
			bpf_map_delete_elem(&ssl_conns, &key);
	}
	struct cg_event *e = new_event(cs->id, cs->port, CG_STATE);
	if (!e)
		return 0;
	e->old_state = oldstate;
	e->new_state = newstate;
	e->len = BPF_CORE_READ(s, sk_err);
	e->unacked = unacked(s);
	e->seq = write_seq(s);
	/* A client leaving is worth a wake-up (the detection delay); the rest waits
	 * for the next drain. */
	__u64 wake = newstate == TCP_CLOSE_WAIT || newstate == TCP_CLOSE ? BPF_RB_FORCE_WAKEUP
									 : BPF_RB_NO_WAKEUP;
	send(e, wake);
	return 0;
}

/* Catches: an RST from the client, with the response bytes it never
 * acknowledged (read before the reset purges the write queue). */
SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(cg_reset, struct sock *sk)
{
	if (!sk)
		return 0;
	struct conn_state *cs = watched(sk);
	if (!cs)
		return 0;
	struct cg_event *e = new_event(cs->id, cs->port, CG_RESET);
	if (!e)
		return 0;
	e->unacked = unacked(sk);
	e->seq = write_seq(sk);
	send(e, BPF_RB_FORCE_WAKEUP);
	return 0;
}

/* Catches: a thread entering OpenSSL's SSL_read, SSL_read_ex, SSL_write,
 * SSL_write_ex or SSL_do_handshake (the cookie says which), in any process
 * that maps a probed library — at its first instruction, or inside it before
 * any argument register is written: remembers the SSL object and the
 * caller's buffer for the socket programs inside the call and the return
 * below. */
SEC("uprobe")
int cg_ssl_enter(struct pt_regs *ctx)
{
	__u8 fn = bpf_get_attach_cookie(ctx);
	__u64 tid = bpf_get_current_pid_tgid();
	/* A handshake run inside a read or write belongs to that call. */
	if (fn == SSL_FN_HANDSHAKE && bpf_map_lookup_elem(&ssl_calls, &tid))
		return 0;
	struct ssl_call c = {
		.ssl = ctx->di,
		.buf = ctx->si,
		.count_at = fn == SSL_FN_READ_EX || fn == SSL_FN_WRITE_EX ||
					    fn == SSL_FN_READ_EARLY || fn == SSL_FN_PEEK_EX
				    ? ctx->cx
				    : 0,
		.fn = fn,
	};
	bpf_map_update_elem(&ssl_calls, &tid, &c, BPF_ANY);
	__u32 tgid = tid >> 32;
	if (!bpf_map_lookup_elem(&ssl_procs, &tgid)) {
		__u8 one = 1;
		bpf_map_update_elem(&ssl_procs, &tgid, &one, BPF_ANY);
	}
	return 0;
}

/* A call returning, with its result in ax: a read or write that moved
 * plaintext on an SSL object tied to a watched connection becomes that
 * connection's RECV or SEND (CG_F_TLS), with the bytes read from the caller's
 * buffer; a completed handshake is told (CG_TLS, CG_F_HANDSHAKE). */
static __always_inline int ssl_return(struct pt_regs *ctx)
{
	__u8 fn = bpf_get_attach_cookie(ctx);
	__u64 tid = bpf_get_current_pid_tgid();
	struct ssl_call *c = bpf_map_lookup_elem(&ssl_calls, &tid);
	/* A nested handshake's return leaves the enclosing call's entry. */
	if (!c || c->fn != fn)
		return 0;
	struct ssl_call call = *c;
	bpf_map_delete_elem(&ssl_calls, &tid);
	struct ssl_key key = { .ssl = call.ssl, .tgid = tid >> 32 };
	struct ssl_conn *sc = bpf_map_lookup_elem(&ssl_conns, &key);
	if (!sc)
		return 0; /* not a watched connection's */
	int ret = (int)ctx->ax;
	__u64 n = 0;
	switch (fn) {
	case SSL_FN_HANDSHAKE: {
		/* Done, or not yet (want read/write, failed): either way the server
		 * runs the handshake itself, so one that never completes is told. */
		struct cg_event *e = new_event(sc->id, sc->port, CG_TLS);
		if (e) {
			e->flags = ret == 1 ? CG_F_HANDSHAKE : CG_F_EXPLICIT;
			send(e, BPF_RB_NO_WAKEUP);
		}
		return 0;
	}
	case SSL_FN_PEEK:
	case SSL_FN_PEEK_EX:
		/* Nothing consumed: the read that follows reports the bytes. */
		return 0;
	case SSL_FN_READ_EARLY:
		if ((ret != 1 && ret != 2) ||
		    bpf_probe_read_user(&n, sizeof(n), (void *)call.count_at))
			return 0;
		break;
	case SSL_FN_READ:
	case SSL_FN_WRITE:
		if (ret <= 0)
			return 0;
		n = ret;
		break;
	case SSL_FN_READ_EX:
	case SSL_FN_WRITE_EX:
		if (ret != 1 || bpf_probe_read_user(&n, sizeof(n), (void *)call.count_at))
			return 0;
		break;
	default:
		return 0;
	}
	if (n == 0 || n > 0x7fffffff)
		return 0;
	__u8 kind = fn == SSL_FN_WRITE || fn == SSL_FN_WRITE_EX ? CG_SEND : CG_RECV;
	__u8 dir = kind == CG_RECV ? DIR_RECV : DIR_SEND;
	int head = head_run(&sc->run, &sc->last_dir, dir, n) || sc->h2 == H2_YES;
	struct cg_event *e = new_event(sc->id, sc->port, kind);
	if (!e)
		return 0;
	e->len = n;
	e->flags = CG_F_TLS;
	capture_buf(e, call.buf, n, head);
	int walk = h2_more(e, n, h2_decided(&sc->h2, sc->fr, e));
	__u32 captured = e->cap_len;
	int emit = e->flags & CG_F_MORE;
	send(e, BPF_RB_NO_WAKEUP);
	if (walk && !(call.buf && h2_walk(&sc->fr[dir == DIR_SEND], sc->id, sc->port, n, captured,
					  emit, call.buf, 0, 0)))
		sc->h2 = H2_LOST;
	return 0;
}

/* Catches: the calls above returning (a uretprobe, for functions probed at
 * their entry). */
SEC("uretprobe")
int cg_ssl_return(struct pt_regs *ctx)
{
	return ssl_return(ctx);
}

/* Catches: the same, from a uprobe inside the function where its result is
 * already in ax on every path to its ret (user space placed it, on an
 * instruction the kernel emulates: no single-step, no return trampoline). */
SEC("uprobe")
int cg_ssl_exit(struct pt_regs *ctx)
{
	return ssl_return(ctx);
}
