// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Same-node acceleration: data a socket in km_sockhash sends goes straight
 * into its peer's receive queue when the peer is in km_sockhash too (both
 * ends enrolled on this node), past TCP/IP and the veths. Otherwise it stays
 * on TCP.
 *
 * Each direction chooses once, at its first send, and keeps that choice: a
 * direction that started on TCP never switches to the shortcut, because the
 * receiver reads shortcut data before TCP data still queued and would see
 * the stream out of order. (The client can send before its server end is
 * in the map; that direction then simply stays on TCP.)
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "km_conn.h"

/* The peer's tuple, from the sender's point of view reversed. */
static __always_inline int km_peer_of_msg(const struct sk_msg_md *msg, struct km_tuple *p)
{
	if (msg->family == AF_INET) {
		km_v4mapped(&p->local, msg->remote_ip4);
		km_v4mapped(&p->remote, msg->local_ip4);
	} else if (msg->family == AF_INET6) {
		p->local.a[0] = msg->remote_ip6[0];
		p->local.a[1] = msg->remote_ip6[1];
		p->local.a[2] = msg->remote_ip6[2];
		p->local.a[3] = msg->remote_ip6[3];
		p->remote.a[0] = msg->local_ip6[0];
		p->remote.a[1] = msg->local_ip6[1];
		p->remote.a[2] = msg->local_ip6[2];
		p->remote.a[3] = msg->local_ip6[3];
	} else {
		return 0;
	}
	p->local_port = (__u16)bpf_ntohl(msg->remote_port);
	p->remote_port = (__u16)msg->local_port;
	p->pad = 0;
	return 1;
}

SEC("sk_msg")
int km_sk_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	struct km_sock_value *s;
	__u64 cookie;
	struct km_conn_value *c;
	struct km_tuple p;
	struct tcp_sock *tp;
	__u32 size = msg->size;
	__u64 *in;

	if (!sk)
		return SK_PASS;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		goto pass;
	/* sk_msg programs may not ask for the cookie; sockops gave the socket
	 * one at established, before it could be in the sockhash. */
	cookie = ((struct sock *)tp)->__sk_common.skc_cookie.counter;
	s = cookie ? bpf_map_lookup_elem(&km_tcp_sock, &cookie) : 0;
	if (!s)
		goto pass;
	c = &s->conn;
	if (!c->cookie || (c->flags & KM_CONN_TCP_ONLY) || !km_peer_of_msg(msg, &p))
		goto pass;
	/* After shutdown(SHUT_WR) TCP refuses to send (EPIPE); the shortcut
	 * would not. Leave it to TCP. */
	if (((struct sock *)tp)->sk_shutdown & SEND_SHUTDOWN)
		goto pass;
	/* SK_PASS: the peer is in the map and the data will go to it. */
	if (bpf_msg_redirect_hash(msg, &km_sockhash, &p, BPF_F_INGRESS) != SK_PASS) {
		/* On the first send the peer is not here (not enrolled, not on
		 * this node, or not established yet): TCP for good. Later, it
		 * left the map because it closed, and TCP tells the sender. */
		if (!(c->flags & KM_CONN_REDIRECT))
			c->flags |= KM_CONN_TCP_ONLY;
		goto pass;
	}
	c->flags |= KM_CONN_REDIRECT;
	km_count(KM_STAT_MSG_REDIRECT);
	if (c->flags & KM_CONN_TELEMETRY) {
		__sync_fetch_and_add(&c->redir_sent, size);
		in = bpf_map_lookup_elem(&km_redir_in, &p);
		if (in)
			__sync_fetch_and_add(in, size);
	}
	return SK_PASS;
pass:
	km_count(KM_STAT_MSG_PASS);
	return SK_PASS;
}
