// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Connected UDP sockets whose endpoint left its service are closed.
 *
 * connect() on a UDP socket runs the connect hook once: the socket is
 * bound to the backend chosen then, and its sends never pass a hook again
 * (cgroup sendmsg programs run only for sends that name an address). So
 * when that endpoint is removed, its datagrams would go on to the dead
 * address for as long as the socket lives. Nothing in the kernel can move
 * a connected socket to another peer; what it can do is abort it
 * (bpf_sock_destroy, from an iterator over UDP sockets): the application
 * gets ECONNABORTED on a receive, EDESTADDRREQ on a send, and reconnects,
 * which the connect hook translates afresh.
 *
 * The daemon reads this iterator in each enrolled pod's network namespace
 * after an update that may have removed endpoints (iter/udp walks the
 * namespace it was opened in). It decides from the maps themselves, as a
 * connect would, so a sweep at any time is right: a socket whose workload
 * is still an endpoint of its service, at the address and port the socket
 * is connected to, stays. The reader gets each closed socket's cookie.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "km_lb.h"
#include "km_conn.h"

#ifndef TCP_ESTABLISHED
#define TCP_ESTABLISHED 1 /* a connected UDP socket */
#endif

struct udp_sock;

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* Where the socket is connected to, as a 16-byte address (IPv4 mapped)
 * and a port in network order; 0 when it is not connected. */
static __always_inline int km_udp_peer(struct sock *sk, struct km_addr *a, __u16 *port)
{
	struct sock_common *skc = &sk->__sk_common;

	if (skc->skc_state != TCP_ESTABLISHED)
		return 0;
	if (skc->skc_family == AF_INET) {
		km_v4mapped(a, skc->skc_daddr);
	} else if (skc->skc_family == AF_INET6) {
		a->a[0] = skc->skc_v6_daddr.in6_u.u6_addr32[0];
		a->a[1] = skc->skc_v6_daddr.in6_u.u6_addr32[1];
		a->a[2] = skc->skc_v6_daddr.in6_u.u6_addr32[2];
		a->a[3] = skc->skc_v6_daddr.in6_u.u6_addr32[3];
	} else {
		return 0;
	}
	*port = skc->skc_dport;
	return 1;
}

struct km_find {
	__u32 service_id;
	__u32 prio;
	__u32 workload_id;
	__u32 index; /* found at, 0: not */
};

static long km_find_step(__u64 i, void *arg)
{
	struct km_find *f = arg;

	if (km_endpoint_at(f->service_id, f->prio, i + 1) != f->workload_id)
		return 0;
	f->index = i + 1;
	return 1;
}

/* Whether the socket's workload is still an endpoint of its service. A
 * removal moves the last endpoint into the hole, so a socket whose slot no
 * longer holds its workload looks the workload up in the lists (and
 * remembers where, so the next sweep needs one lookup). */
static __always_inline int km_udp_still_listed(const struct km_service_value *svc,
					       struct km_sock_value *s)
{
	struct km_find f = { .service_id = s->service_id, .workload_id = s->workload_id };
	__u32 p;

	if (s->index && s->prio < KM_MAX_PRIO &&
	    km_endpoint_at(s->service_id, s->prio, s->index) == s->workload_id)
		return 1;
#pragma unroll
	for (p = 0; p < KM_MAX_PRIO; p++) {
		f.prio = p;
		f.index = 0;
		if (!svc->ep_count[p])
			continue;
		bpf_loop(svc->ep_count[p], km_find_step, &f, 0);
		if (f.index) {
			s->prio = p;
			s->index = f.index;
			return 1;
		}
	}
	return 0;
}

/* Whether a connect to the service now could still give this socket's
 * peer: the service and its port exist, the workload is listed and has
 * that address, the port maps to that target port. */
static __always_inline int km_udp_peer_live(struct km_sock_value *s)
{
	struct km_port_key pk = { .service_id = s->service_id, .port = bpf_ntohs(s->orig_port) };
	struct km_service_value *svc = bpf_map_lookup_elem(&km_service, &s->service_id);
	struct km_backend_value *be;
	struct km_port_value *pv;
	struct km_addr a;

	if (!svc)
		return 0;
	pv = bpf_map_lookup_elem(&km_port, &pk);
	if (!pv)
		return 0;
	be = bpf_map_lookup_elem(&km_backend, &s->workload_id);
	if (!be || !km_backend_addr(be, km_addr_is_v4mapped(&s->backend), &a) ||
	    !km_addr_eq(&a, &s->backend))
		return 0;
	if (bpf_htons(km_target_port(s->service_id, s->workload_id, pk.port, pv)) != s->backend_port)
		return 0;
	return km_udp_still_listed(svc, s);
}

SEC("iter/udp")
int km_udp_iter(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;
	struct km_sock_value *s;
	struct km_addr peer;
	__u16 peer_port;
	__u64 cookie;

	if (!sk)
		return 0;
	s = bpf_sk_storage_get(&km_sock, sk, 0, 0);
	if (!s || !(s->flags & KM_SOCK_REWRITTEN))
		return 0;
	/* Connected, and to what the connect hook chose: an unconnected
	 * socket is translated again on its next send, and one connected
	 * elsewhere since is not ours. */
	if (!km_udp_peer(sk, &peer, &peer_port) || peer_port != s->backend_port ||
	    !km_addr_eq(&peer, &s->backend))
		return 0;
	if (km_udp_peer_live(s))
		return 0;
	if (bpf_sock_destroy((struct sock_common *)sk))
		return 0;
	km_count(KM_STAT_UDP_ENDPOINT_GONE);
	cookie = bpf_get_socket_cookie(sk);
	bpf_seq_write(ctx->meta->seq, &cookie, sizeof(cookie));
	return 0;
}
