// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket-address hooks: connect, UDP sendmsg/recvmsg and getpeername, for
 * IPv4 and IPv6. They act only for sockets whose network namespace is
 * enrolled in km_manage, so attaching them high in the cgroup tree is safe.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "km_lb.h"
#include "km_authz.h"

#ifndef EACCES
#define EACCES 13
#endif

/* bpf_sock_addr carries the port in network order in the low 16 bits. */
static __always_inline __u16 km_ctx_port(const struct bpf_sock_addr *ctx)
{
	return bpf_ntohs((__u16)ctx->user_port);
}

static __always_inline void km_ctx_dst6(const struct bpf_sock_addr *ctx, struct km_addr *a)
{
	a->a[0] = ctx->user_ip6[0];
	a->a[1] = ctx->user_ip6[1];
	a->a[2] = ctx->user_ip6[2];
	a->a[3] = ctx->user_ip6[3];
}

static __always_inline void km_ctx_set4(struct bpf_sock_addr *ctx, const struct km_addr *a,
					__u16 port_net)
{
	ctx->user_ip4 = a->a[3];
	ctx->user_port = port_net;
}

static __always_inline void km_ctx_set6(struct bpf_sock_addr *ctx, const struct km_addr *a,
					__u16 port_net)
{
	ctx->user_ip6[0] = a->a[0];
	ctx->user_ip6[1] = a->a[1];
	ctx->user_ip6[2] = a->a[2];
	ctx->user_ip6[3] = a->a[3];
	ctx->user_port = port_net;
}

static __always_inline void km_fill_sock(struct km_sock_value *s, const struct km_addr *orig,
					__u16 orig_port_net, const struct km_pick *pick)
{
	s->orig = *orig;
	s->orig_port = orig_port_net;
	s->backend = pick->addr;
	s->backend_port = bpf_htons(pick->port);
	s->service_id = pick->service_id;
	s->workload_id = pick->workload_id;
	s->prio = pick->prio;
	s->index = pick->index;
	s->flags = pick->flags;
}

/* Remembers the original destination for getpeername, UDP replies,
 * telemetry and a waypoint's PROXY v2 header: a TCP socket in km_tcp_sock
 * (whose element sockops fills in at established and deletes at close), a
 * UDP one in its storage. Fails (-1) only for a TCP socket bound for a
 * waypoint that km_tcp_sock has no room for: without the element it would
 * reach the waypoint with no header, which no waypoint can serve. */
static __always_inline int km_remember(struct bpf_sock_addr *ctx, const struct km_addr *orig,
				       __u16 orig_port_net, const struct km_pick *pick)
{
	struct km_sock_value *s;
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return 0;
	if (ctx->protocol == IPPROTO_TCP) {
		struct km_sock_value v = {};
		__u64 cookie = bpf_get_socket_cookie(ctx);

		km_fill_sock(&v, orig, orig_port_net, pick);
		if (bpf_map_update_elem(&km_tcp_sock, &cookie, &v, BPF_ANY)) {
			km_count(KM_STAT_TCP_SOCK_FULL);
			return (pick->flags & KM_SOCK_WAYPOINT) ? -1 : 0;
		}
		return 0;
	}
	s = bpf_sk_storage_get(&km_sock, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (s)
		km_fill_sock(s, orig, orig_port_net, pick);
	return 0;
}

static __always_inline int km_refuse(void)
{
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

/*
 * An enrolled client knows its own identity, so a connection the
 * destination's policies deny is refused here, before any packet: EACCES.
 * With the client's workload not known yet, the destination's tc program
 * decides instead.
 */
static __always_inline int km_connect_denied(const struct km_client *c, const struct km_pick *pick,
					     const struct km_addr *dst, __u16 port, int v4)
{
	struct km_backend_value *to, *self;
	struct km_addr src;
	__u32 ps;

	if (!pick->workload_id || !c->workload_id)
		return 0;
	/* The load balancer has usually looked the workload up already. */
	if (pick->be_known) {
		ps = pick->authz_ps;
	} else {
		to = bpf_map_lookup_elem(&km_backend, &pick->workload_id);
		ps = to ? to->authz_ps : 0;
	}
	if (!ps)
		return 0;
	self = bpf_map_lookup_elem(&km_backend, &c->workload_id);
	if (!self || !km_backend_addr(self, v4, &src))
		return 0;
	return km_authz_decide(ps, self->identity_id, &src, dst, port);
}

static __always_inline int km_deny(void)
{
	km_count(KM_STAT_AUTHZ_CONNECT_DENY);
	bpf_set_retval(-EACCES);
	return 0;
}

/* Shared body of connect4/connect6. v4 tells how to write the result back. */
static __always_inline int km_connect(struct bpf_sock_addr *ctx, struct km_addr *dst, int v4,
				      int ctx_is_v4)
{
	struct km_client c;
	struct km_pick pick = {};
	__u16 port_net = (__u16)ctx->user_port;
	int tcp = ctx->protocol == IPPROTO_TCP;

	if (!km_client_of(ctx, &c))
		return 1;

	switch (km_translate(&c, dst, km_ctx_port(ctx), v4, tcp, &pick)) {
	case KM_PASS:
		if (tcp && km_connect_denied(&c, &pick, dst, km_ctx_port(ctx), v4))
			return km_deny();
		return 1;
	case KM_REFUSE:
		return km_refuse();
	default:
		break;
	}
	/* Service traffic to a backend: its policies apply. (A waypoint
	 * enforces its own.) */
	if (tcp && !(pick.flags & KM_SOCK_WAYPOINT) &&
	    km_connect_denied(&c, &pick, &pick.addr, pick.port, v4))
		return km_deny();
	/* sockops keeps a waypoint pod's sockets out of acceleration. */
	if (c.flags & KM_MANAGE_WAYPOINT)
		pick.flags |= KM_SOCK_WAYPOINT_POD;
	if (km_remember(ctx, dst, port_net, &pick))
		return km_refuse();
	if (ctx_is_v4)
		km_ctx_set4(ctx, &pick.addr, bpf_htons(pick.port));
	else
		km_ctx_set6(ctx, &pick.addr, bpf_htons(pick.port));
	return 1;
}

SEC("cgroup/connect4")
int km_connect4(struct bpf_sock_addr *ctx)
{
	struct km_addr dst;

	km_addr_from_v4(&dst, ctx->user_ip4);
	return km_connect(ctx, &dst, 1, 1);
}

SEC("cgroup/connect6")
int km_connect6(struct bpf_sock_addr *ctx)
{
	struct km_addr dst;

	km_ctx_dst6(ctx, &dst);
	return km_connect(ctx, &dst, km_addr_is_v4mapped(&dst), 0);
}

/*
 * Unconnected UDP: every datagram goes through sendmsg. A socket keeps the
 * backend it was given for the service it first talked to (socket storage),
 * as long as that endpoint is still in place, so a flow does not spray over
 * backends. Further services on the same socket are translated per datagram
 * and their replies found through km_udp_rev.
 */
static __always_inline int km_cached_pick_valid(const struct km_sock_value *s)
{
	struct km_backend_value *be;

	if (s->index && km_endpoint_at(s->service_id, s->prio, s->index) != s->workload_id)
		return 0;
	be = bpf_map_lookup_elem(&km_backend, &s->workload_id);
	return be != 0;
}

static __always_inline int km_sendmsg(struct bpf_sock_addr *ctx, struct km_addr *dst, int v4,
				      int ctx_is_v4)
{
	struct km_client c;
	struct km_pick pick = {};
	struct km_sock_value *s;
	__u16 port_net = (__u16)ctx->user_port;
	struct bpf_sock *sk = ctx->sk;

	if (!km_client_of(ctx, &c))
		return 1;

	s = sk ? bpf_sk_storage_get(&km_sock, sk, 0, 0) : 0;
	if (s && (s->flags & KM_SOCK_REWRITTEN) && s->orig_port == port_net &&
	    km_addr_eq(&s->orig, dst) && km_cached_pick_valid(s)) {
		if (ctx_is_v4)
			km_ctx_set4(ctx, &s->backend, s->backend_port);
		else
			km_ctx_set6(ctx, &s->backend, s->backend_port);
		return 1;
	}

	switch (km_translate(&c, dst, km_ctx_port(ctx), v4, 0, &pick)) {
	case KM_PASS:
		return 1;
	case KM_REFUSE:
		return km_refuse();
	default:
		break;
	}
	if (ctx_is_v4)
		km_ctx_set4(ctx, &pick.addr, bpf_htons(pick.port));
	else
		km_ctx_set6(ctx, &pick.addr, bpf_htons(pick.port));

	if (!s || !(s->flags & KM_SOCK_REWRITTEN) ||
	    (s->orig_port == port_net && km_addr_eq(&s->orig, dst))) {
		km_remember(ctx, dst, port_net, &pick);
	} else {
		struct km_udp_rev_key rk = {
			.sock_cookie = bpf_get_socket_cookie(ctx),
			.backend = pick.addr,
			.backend_port = bpf_htons(pick.port),
		};
		struct km_udp_rev_value rv = { .orig = *dst, .orig_port = port_net };

		bpf_map_update_elem(&km_udp_rev, &rk, &rv, BPF_ANY);
	}
	return 1;
}

SEC("cgroup/sendmsg4")
int km_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct km_addr dst;

	km_addr_from_v4(&dst, ctx->user_ip4);
	return km_sendmsg(ctx, &dst, 1, 1);
}

SEC("cgroup/sendmsg6")
int km_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct km_addr dst;

	km_ctx_dst6(ctx, &dst);
	return km_sendmsg(ctx, &dst, km_addr_is_v4mapped(&dst), 0);
}

/* Replies: a datagram from the backend we chose appears to come from the
 * service address the application sent to. */
static __always_inline int km_recvmsg(struct bpf_sock_addr *ctx, struct km_addr *src,
				      int ctx_is_v4)
{
	struct bpf_sock *sk = ctx->sk;
	struct km_sock_value *s;
	struct km_udp_rev_key rk = {};
	struct km_udp_rev_value *rv;
	__u16 port_net = (__u16)ctx->user_port;

	if (!sk)
		return 1;
	s = bpf_sk_storage_get(&km_sock, sk, 0, 0);
	if (!s)
		return 1;
	if ((s->flags & KM_SOCK_REWRITTEN) && s->backend_port == port_net &&
	    km_addr_eq(&s->backend, src)) {
		if (ctx_is_v4)
			km_ctx_set4(ctx, &s->orig, s->orig_port);
		else
			km_ctx_set6(ctx, &s->orig, s->orig_port);
		km_count(KM_STAT_UDP_REVERSE);
		return 1;
	}
	rk.sock_cookie = bpf_get_socket_cookie(ctx);
	rk.backend = *src;
	rk.backend_port = port_net;
	rv = bpf_map_lookup_elem(&km_udp_rev, &rk);
	if (rv) {
		if (ctx_is_v4)
			km_ctx_set4(ctx, &rv->orig, rv->orig_port);
		else
			km_ctx_set6(ctx, &rv->orig, rv->orig_port);
		km_count(KM_STAT_UDP_REVERSE);
	}
	return 1;
}

SEC("cgroup/recvmsg4")
int km_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct km_addr src;

	km_addr_from_v4(&src, ctx->user_ip4);
	return km_recvmsg(ctx, &src, 1);
}

SEC("cgroup/recvmsg6")
int km_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct km_addr src;

	km_ctx_dst6(ctx, &src);
	return km_recvmsg(ctx, &src, 0);
}

/* The application sees the address it dialled, not the backend. */
static __always_inline int km_getpeername(struct bpf_sock_addr *ctx, int ctx_is_v4)
{
	struct bpf_sock *sk = ctx->sk;
	struct km_sock_value *s;

	if (!sk)
		return 1;
	if (ctx->protocol == IPPROTO_TCP) {
		__u64 cookie = bpf_get_socket_cookie(ctx);

		s = bpf_map_lookup_elem(&km_tcp_sock, &cookie);
	} else {
		s = bpf_sk_storage_get(&km_sock, sk, 0, 0);
	}
	if (!s || !(s->flags & KM_SOCK_REWRITTEN))
		return 1;
	if (ctx_is_v4)
		km_ctx_set4(ctx, &s->orig, s->orig_port);
	else
		km_ctx_set6(ctx, &s->orig, s->orig_port);
	return 1;
}

SEC("cgroup/getpeername4")
int km_getpeername4(struct bpf_sock_addr *ctx)
{
	return km_getpeername(ctx, 1);
}

SEC("cgroup/getpeername6")
int km_getpeername6(struct bpf_sock_addr *ctx)
{
	return km_getpeername(ctx, 0);
}
