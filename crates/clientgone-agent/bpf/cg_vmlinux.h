/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The few kernel types watch.bpf.c reads, written by hand instead of a full
 * `bpftool btf dump` vmlinux.h: the object then builds the same on any machine
 * (the committed watch.bpf.o is compared with a rebuild in CI), and the loader
 * relocates each field against the running kernel's BTF (CO-RE), so the layout
 * below only has to name the fields, not place them.
 */
#ifndef CG_VMLINUX_H
#define CG_VMLINUX_H

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef short __s16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

/* UAPI values (include/uapi/linux/bpf.h): stable by the kernel's promise. */
enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_SK_STORAGE = 24,
	BPF_MAP_TYPE_RINGBUF = 27,
	BPF_MAP_TYPE_TASK_STORAGE = 29,
};
enum { BPF_ANY = 0 };
enum { BPF_F_NO_PREALLOC = 1 };
enum { BPF_LOCAL_STORAGE_GET_F_CREATE = 1 };
enum { BPF_RB_NO_WAKEUP = 1, BPF_RB_FORCE_WAKEUP = 2 };

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct sock_common {
	/* Local port in host order; already 0 at the move to TCP_CLOSE, so it is
	 * read only when a connection is established. */
	__u16 skc_num;
	/* TCP_*; inet_sock_set_state fires before the new state is stored. */
	volatile unsigned char skc_state;
};

struct socket;

struct sock {
	struct sock_common __sk_common;
	/* The error the connection died of: ECONNRESET after an RST, ETIMEDOUT
	 * when retransmissions or keepalive gave up. Set before the move to CLOSE. */
	int sk_err;
	__u16 sk_protocol;
	/* The socket file's side; NULL once the process closed it (orphaned). */
	struct socket *sk_socket;
};

struct inet_sock {
	struct sock sk;
	/* Local port, network order; unlike skc_num still set at TCP_CLOSE. */
	__be16 inet_sport;
};

/* A socket's inode (what /proc/net/tcp lists) lives beside it. */
struct socket {
	short type;
};

struct inode {
	unsigned long i_ino;
};

struct socket_alloc {
	struct socket socket;
	struct inode vfs_inode;
};

struct tcp_sock {
	/* write_seq - snd_una: bytes handed to TCP that the peer never acknowledged. */
	__u32 snd_una;
	__u32 write_seq;
};

struct pt_regs {
	/* x86_64 arguments 1..4 (a system call's fourth is in r10, never read)
	 * and a function's return value (ax, at a uretprobe). */
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long cx;
	unsigned long ax;
	/* The system call's number, for as long as the thread is in it. */
	unsigned long orig_ax;
};

struct task_struct {
	int pid;
	/* PF_*: kernel threads and io_uring's workers have no system call of
	 * their own in their saved registers. */
	unsigned int flags;
};

#pragma clang attribute pop

/* User-space ABI (not kernel memory, so no relocation): struct iovec and
 * struct user_msghdr as every libc lays them out on 64-bit Linux. */
struct cg_iovec {
	__u64 base;
	__u64 len;
};

struct cg_user_msghdr {
	__u64 msg_name;
	__s32 msg_namelen;
	__s32 pad;
	__u64 msg_iov;
	__u64 msg_iovlen;
};

#endif
