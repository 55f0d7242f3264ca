/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Connection records shared by the sockops, sk_msg and iterator programs:
 * tuples, the connection record in each TCP socket's km_tcp_sock element
 * and the events sent to the daemon.
 *
 * A few kernel structs are read through BTF (CO-RE): only the fields named
 * here, relocated against the running kernel at load time.
 */
#ifndef KM_CONN_H
#define KM_CONN_H

#include <linux/bpf.h>
#include <linux/in6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "km_maps.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* The fields of the kernel's own structs that the programs read. */
struct sock_common {
	unsigned char skc_state;
	unsigned long skc_flags;
	struct {
		__s64 counter;
	} skc_cookie; /* atomic64_t: the socket cookie, once anyone asked for it */
	__be32 skc_daddr;  /* the peer of a connected socket */
	__be16 skc_dport;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	int sk_err;
	__u8 sk_shutdown;
} __attribute__((preserve_access_index));

#define KM_SOCK_DONE 1 /* enum sock_flags: the peer's FIN arrived */

#ifndef SEND_SHUTDOWN
#define SEND_SHUTDOWN 2
#endif

struct tcp_sock {
	__u64 bytes_received;
	__u64 bytes_acked;
	__u32 snd_una;
	__u32 write_seq;
	__u32 srtt_us; /* smoothed RTT << 3, microseconds */
	__u32 total_retrans;
} __attribute__((preserve_access_index));

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct bpf_map;

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

static __always_inline void km_v4mapped(struct km_addr *a, __u32 ip4)
{
	a->a[0] = 0;
	a->a[1] = 0;
	a->a[2] = bpf_htonl(0x0000ffff);
	a->a[3] = ip4;
}

/* The socket's tuple from the sockops context. IPv4 is written v4-mapped,
 * so an AF_INET socket and a dual-stack AF_INET6 one agree on keys. */
static __always_inline int km_tuple_of_ops(const struct bpf_sock_ops *ops, struct km_tuple *t)
{
	if (ops->family == AF_INET) {
		km_v4mapped(&t->local, ops->local_ip4);
		km_v4mapped(&t->remote, ops->remote_ip4);
	} else if (ops->family == AF_INET6) {
		t->local.a[0] = ops->local_ip6[0];
		t->local.a[1] = ops->local_ip6[1];
		t->local.a[2] = ops->local_ip6[2];
		t->local.a[3] = ops->local_ip6[3];
		t->remote.a[0] = ops->remote_ip6[0];
		t->remote.a[1] = ops->remote_ip6[1];
		t->remote.a[2] = ops->remote_ip6[2];
		t->remote.a[3] = ops->remote_ip6[3];
	} else {
		return 0;
	}
	t->local_port = (__u16)ops->local_port;
	/* remote_port holds the port in network order in its upper half. */
	t->remote_port = (__u16)bpf_ntohl(ops->remote_port);
	t->pad = 0;
	return 1;
}

/* Loopback: 127.0.0.0/8 (v4-mapped) or ::1. */
static __always_inline int km_addr_is_loopback(const struct km_addr *a)
{
	if (a->a[0] || a->a[1])
		return 0;
	if (a->a[2] == bpf_htonl(0x0000ffff))
		return (a->a[3] & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
	return a->a[2] == 0 && a->a[3] == bpf_htonl(1);
}

/* The tuple under which a socket's peer is filed. */
static __always_inline void km_tuple_reverse(const struct km_tuple *t, struct km_tuple *r)
{
	r->local = t->remote;
	r->remote = t->local;
	r->local_port = t->remote_port;
	r->remote_port = t->local_port;
	r->pad = 0;
}

static __always_inline void km_conn_tuple(const struct km_conn_value *c, struct km_tuple *t)
{
	t->local = c->local;
	t->remote = c->remote;
	t->local_port = c->local_port;
	t->remote_port = c->remote_port;
	t->pad = 0;
}

/* What the socket received past TCP (from its peer's sk_msg program). */
static __always_inline __u64 km_redir_in_of(const struct km_conn_value *c)
{
	struct km_tuple t;
	__u64 *in;

	if (!(c->flags & KM_CONN_SOCKHASH))
		return 0;
	km_conn_tuple(c, &t);
	in = bpf_map_lookup_elem(&km_redir_in, &t);
	return in ? *in : 0;
}

/* Fills the TCP part of an event: payload bytes each way (TCP counts the
 * SYN and FINs in sequence space; they are taken out again), what went past
 * TCP, RTT and retransmits. state is the TCP state the socket is (or, at
 * close, was) in. */
static __always_inline void km_event_tcp(struct km_conn_event *e, const struct km_conn_value *c,
					 struct tcp_sock *tp, __u32 state)
{
	struct sock *sk = (struct sock *)tp;
	__u64 acked = tp->bytes_acked, got = tp->bytes_received, in;

	acked = acked > c->acked_base ? acked - c->acked_base : 0;
	/* Our FIN is in bytes_acked once it went out and all up to it is
	 * acknowledged. */
	switch (state) {
	case BPF_TCP_FIN_WAIT1:
	case BPF_TCP_FIN_WAIT2:
	case BPF_TCP_CLOSING:
	case BPF_TCP_LAST_ACK:
		if (acked && tp->snd_una == tp->write_seq)
			acked--;
	}
	/* The peer's FIN is in bytes_received once it arrived. */
	if (got && (sk->__sk_common.skc_flags & (1UL << KM_SOCK_DONE)))
		got--;
	in = km_redir_in_of(c);
	e->bytes_sent = acked + c->redir_sent;
	e->bytes_received = got + in;
	if (in)
		e->conn.flags |= KM_CONN_REDIRECT_IN;
	e->srtt_us = tp->srtt_us >> 3;
	e->total_retrans = tp->total_retrans;
}

/* A record in the ring buffer, written in place and handed over with
 * km_submit, or NULL (counted) when the ring is full. */
static __always_inline struct km_conn_event *km_reserve(void)
{
	struct km_conn_event *e = bpf_ringbuf_reserve(&km_events, sizeof(*e), 0);

	if (!e) {
		km_count(KM_STAT_EVENTS_LOST);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	return e;
}

/* The reader is woken only by the record that takes the ring past the
 * wakeup threshold; otherwise it drains on its own tick. So a busy node
 * pays no wakeup per connection, and a reader that is slow to run is not
 * sent one per record either (it drains everything once it runs). */
static __always_inline void km_submit(struct km_conn_event *e)
{
	__u64 avail = bpf_ringbuf_query(&km_events, BPF_RB_AVAIL_DATA);
	__u64 flags = BPF_RB_NO_WAKEUP;

	/* avail counts reserved records, with their 8-byte headers; a window
	 * of a few records, as CPUs reserve concurrently. */
	if (avail >= km_events_wakeup && avail < km_events_wakeup + 16 * (sizeof(*e) + 8))
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

#endif
