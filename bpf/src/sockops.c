// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * TCP life cycle of enrolled sockets (cgroup sock_ops, attached with the
 * socket-address hooks and gated the same way, by the netns cookie).
 *
 * At established, each end gets a connection record in km_tcp_sock under
 * its socket cookie (who, what it dialled, when); at the transition to
 * CLOSE, one event with the record, TCP's own byte counters, RTT and
 * retransmits and how it ended, and the element goes. Long-lived
 * connections are reported by the daemon's sweep (conn_iter.c), which
 * needs no callback per packet and sees idle and accelerated connections
 * as well as busy ones. There is no event at
 * open: it cost ~0.3 us in the softirq that establishes the connection,
 * and what the daemon needs from it (the client's dialled service for a
 * server end on this node) it gets from the client's close or a sweep.
 *
 * With acceleration on, each end also goes into km_sockhash under its own
 * tuple, and sk_msg.c sends its data straight to the peer when the peer is
 * there too. A client the connect hook sent to a waypoint goes into
 * km_wp_sock instead, whatever the features: wp_msg.c puts the PROXY v2
 * header in front of its first bytes.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "km_conn.h"

#ifndef ECONNRESET
#define ECONNRESET 104
#endif
#ifndef EPIPE
#define EPIPE 32
#endif
#ifndef ETIMEDOUT
#define ETIMEDOUT 110
#endif

/* The enrollment flags of the socket's pod (0: not enrolled). */
static __always_inline __u32 km_manage_flags(struct bpf_sock_ops *ops)
{
	__u64 cookie = bpf_get_netns_cookie(ops);
	struct km_manage_value *mv = bpf_map_lookup_elem(&km_manage, &cookie);

	return mv && (mv->flags & KM_MANAGE_ENROLLED) ? mv->flags : 0;
}


/* The client end: what its connect() asked for, from the connect hook's
 * half of the same element. A server end on this node learns it in the
 * daemon, which pairs the two ends' records by tuple. Pairing in the
 * kernel took an LRU map write per connection and a delete at each end,
 * ~0.8 us. */
static __always_inline void km_client_origin(const struct km_sock_value *s, struct km_conn_value *c)
{
	if (!(s->flags & KM_SOCK_REWRITTEN))
		return;
	c->orig = s->orig;
	c->orig_port = bpf_ntohs(s->orig_port);
	c->service_id = s->service_id;
	c->workload_id = s->workload_id;
	c->flags |= KM_CONN_REWRITTEN;
}

/* A zero value to create an element from. */
static const struct km_sock_value km_sock_zero;

/* A client the connect hook rewrote is in km_tcp_sock already: from here
 * on TCP will move it to CLOSE however the connect ends (refused, timed
 * out, closed), so the close callback is what deletes its element. */
static __always_inline void km_connecting(struct bpf_sock_ops *ops)
{
	__u64 cookie = bpf_get_socket_cookie(ops);
	struct km_sock_value *s = bpf_map_lookup_elem(&km_tcp_sock, &cookie);

	if (!s)
		return;
	s->flags |= KM_SOCK_CONNECTING;
	bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* Bytes went out before the connection was established: TCP Fast Open put
 * them in the SYN (acknowledged beyond the SYN's one) or queued them
 * behind it. A header now would land in the middle of the stream. */
static __always_inline int km_sent_early(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk = ops->sk;
	struct tcp_sock *tp = sk ? bpf_skc_to_tcp_sock(sk) : 0;

	return tp && (tp->bytes_acked > 1 || tp->write_seq != tp->snd_una);
}

/* A client bound for a waypoint waits in km_wp_sock for its first send,
 * which gets the PROXY v2 header (wp_msg.c). It is filed here, before TCP
 * wakes the application up, so no byte can leave ahead of the header.
 * (Any failure counts as full: the map is all that can refuse.) The RTT
 * callback tells when the peer acknowledged data: see km_wp_release. */
static __always_inline void km_wp_watch(struct bpf_sock_ops *ops, __u64 cookie)
{
	if (km_sent_early(ops)) {
		km_count(KM_STAT_WP_NO_HEADER);
		return;
	}
	if (bpf_sock_hash_update(ops, &km_wp_sock, &cookie, BPF_ANY)) {
		km_count(KM_STAT_WP_SOCK_FULL);
		return;
	}
	bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_RTT_CB_FLAG);
}

/* Data was acknowledged. Once the header is out, the socket leaves
 * km_wp_sock (the sk_msg program may not remove it itself): the kernel
 * gives it back its own TCP operations, and its later sends cost nothing.
 * One callback per connection: the flag goes with the socket. */
static __always_inline void km_wp_release(struct bpf_sock_ops *ops)
{
	__u64 cookie = bpf_get_socket_cookie(ops);
	struct km_sock_value *s = bpf_map_lookup_elem(&km_tcp_sock, &cookie);

	if (s && !(s->flags & KM_SOCK_HEADER_SENT))
		return;
	bpf_map_delete_elem(&km_wp_sock, &cookie);
	bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_RTT_CB_FLAG);
}

/* With nothing to record, only a client bound for a waypoint (filed by the
 * connect hook) has something to do at established. */
static __always_inline void km_established_bare(struct bpf_sock_ops *ops, __u8 role)
{
	__u64 cookie;
	struct km_sock_value *s;

	if (role != KM_ROLE_CLIENT)
		return;
	cookie = bpf_get_socket_cookie(ops);
	s = bpf_map_lookup_elem(&km_tcp_sock, &cookie);
	if (s && (s->flags & KM_SOCK_WAYPOINT))
		km_wp_watch(ops, cookie);
}

static __always_inline void km_established(struct bpf_sock_ops *ops, __u8 role)
{
	__u32 feat = km_features();
	struct km_sock_value *s;
	struct km_conn_value *c;
	struct bpf_sock *sk = ops->sk;
	struct km_tuple t;
	__u32 mflags;
	__u64 cookie;

	if (!sk)
		return;
	if (!(feat & (KM_FEAT_TELEMETRY | KM_FEAT_SOCKMAP))) {
		km_established_bare(ops, role);
		return;
	}
	/* Traffic inside a pod over loopback never leaves it (Istio's proxies
	 * do not see it either), and its tuples repeat from pod to pod: a
	 * sockhash keyed by them would mix pods up. (A waypoint is never on
	 * the client's loopback.) */
	if (!km_tuple_of_ops(ops, &t) || km_addr_is_loopback(&t.remote))
		return;
	/* A client rewritten at connect() has its element already (and is
	 * enrolled: the hook rewrites for enrolled pods only); the record
	 * goes beside what the connect hook left there. */
	cookie = bpf_get_socket_cookie(ops);
	s = bpf_map_lookup_elem(&km_tcp_sock, &cookie);
	if (!s) {
		mflags = km_manage_flags(ops);
		if (!mflags)
			return;
		if (bpf_map_update_elem(&km_tcp_sock, &cookie, &km_sock_zero, BPF_NOEXIST)) {
			km_count(KM_STAT_TCP_SOCK_FULL);
			return;
		}
		s = bpf_map_lookup_elem(&km_tcp_sock, &cookie);
		if (!s)
			return;
		if (mflags & KM_MANAGE_WAYPOINT)
			s->flags |= KM_SOCK_WAYPOINT_POD;
	}
	if (s->flags & KM_SOCK_WAYPOINT)
		km_wp_watch(ops, cookie);
	/* Whatever else is on, the element must go at close. */
	bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	c = &s->conn;
	/* A socket can connect again after a disconnect: start afresh. */
	__builtin_memset(c, 0, sizeof(*c));
	c->cookie = cookie;
	c->start_ns = bpf_ktime_get_ns();
	c->local = t.local;
	c->remote = t.remote;
	c->local_port = t.local_port;
	c->remote_port = t.remote_port;
	c->role = role;
	c->acked_base = ops->bytes_acked;

	if (feat & KM_FEAT_TELEMETRY) {
		c->flags |= KM_CONN_TELEMETRY;
		if (role == KM_ROLE_CLIENT)
			km_client_origin(s, c);
		km_count(KM_STAT_CONN_OPEN);
	}
	/* What goes to a waypoint must reach it through TCP, header first, and
	 * a waypoint's pod must not be shortcut either: neither side of a
	 * client-waypoint connection, nor the waypoint's own connections to
	 * backends, is accelerated. */
	if ((feat & KM_FEAT_SOCKMAP) && !(s->flags & (KM_SOCK_WAYPOINT | KM_SOCK_WAYPOINT_POD))) {
		if (c->flags & KM_CONN_TELEMETRY) {
			__u64 zero = 0;

			bpf_map_update_elem(&km_redir_in, &t, &zero, BPF_ANY);
		}
		if (bpf_sock_hash_update(ops, &km_sockhash, &t, BPF_ANY) == 0) {
			c->flags |= KM_CONN_SOCKHASH;
			km_count(KM_STAT_SOCKHASH_ADD);
		} else {
			km_count(KM_STAT_SOCKHASH_FAIL);
		}
	}
}

/* How the connection ended, from the error TCP recorded and the state it
 * left for CLOSE. */
static __always_inline __u8 km_end_of(int err, __u32 old_state)
{
	switch (err) {
	case 0:
		break;
	case ECONNRESET:
	case EPIPE:
		return KM_END_RESET;
	case ETIMEDOUT:
		return KM_END_TIMEOUT;
	default:
		return KM_END_ERROR;
	}
	switch (old_state) {
	case BPF_TCP_FIN_WAIT1:
	case BPF_TCP_FIN_WAIT2:
	case BPF_TCP_CLOSING:
	case BPF_TCP_LAST_ACK:
	case BPF_TCP_TIME_WAIT:
		return KM_END_FIN;
	}
	return KM_END_ABORT;
}

static __always_inline void km_close_event(const struct km_conn_value *c, struct bpf_sock *sk,
					  __u32 old_state)
{
	struct km_conn_event *e;
	struct tcp_sock *tp;

	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	km_count(KM_STAT_CONN_CLOSE);
	e = km_reserve();
	if (!e)
		return;
	e->conn = *c;
	e->now_ns = bpf_ktime_get_ns();
	km_event_tcp(e, c, tp, old_state);
	e->type = KM_EV_CLOSE;
	e->sk_err = ((struct sock *)tp)->sk_err;
	e->end = km_end_of(e->sk_err, old_state);
	e->old_state = old_state;
	km_submit(e);
}

static __always_inline void km_closed(struct bpf_sock_ops *ops, __u32 old_state)
{
	__u64 cookie = bpf_get_socket_cookie(ops);
	struct bpf_sock *sk = ops->sk;
	struct km_sock_value *s;
	struct km_conn_value *c;

	s = bpf_map_lookup_elem(&km_tcp_sock, &cookie);
	if (!s)
		return;
	c = &s->conn;
	if (sk && c->cookie && !(c->flags & KM_CONN_CLOSED)) {
		c->flags |= KM_CONN_CLOSED;
		if (c->flags & KM_CONN_TELEMETRY)
			km_close_event(c, sk, old_state);
		if (c->flags & KM_CONN_SOCKHASH) {
			struct km_tuple t;

			km_conn_tuple(c, &t);
			bpf_map_delete_elem(&km_redir_in, &t);
		}
	}
	bpf_map_delete_elem(&km_tcp_sock, &cookie);
}

SEC("sockops")
int km_sockops(struct bpf_sock_ops *ops)
{
	switch (ops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		km_connecting(ops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		km_established(ops, KM_ROLE_CLIENT);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		km_established(ops, KM_ROLE_SERVER);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (ops->args[1] == BPF_TCP_CLOSE)
			km_closed(ops, ops->args[0]);
		break;
	case BPF_SOCK_OPS_RTT_CB:
		km_wp_release(ops);
		break;
	}
	return 1;
}
