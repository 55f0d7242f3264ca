/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Service translation at connect time: destination -> frontend -> service ->
 * priority -> endpoint -> backend address and target port. Pure logic over
 * the maps; the attach-point programs turn the verdict into a rewrite or an
 * errno.
 */
#ifndef KM_LB_H
#define KM_LB_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "km_maps.h"

#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif

enum km_verdict {
	KM_PASS = 0,   /* not ours: leave the destination alone */
	KM_REWRITE = 1,
	KM_REFUSE = 2, /* fail the call with -ECONNREFUSED */
};

/* The outcome of a translation, also what socket storage remembers. */
struct km_pick {
	struct km_addr addr;
	__u16 port; /* host order */
	__u16 be_known; /* authz_ps is the workload's (its backend was looked up) */
	__u32 service_id;
	__u32 workload_id;
	__u32 prio;
	__u32 index;
	__u32 flags; /* enum km_sock_flags */
	__u32 authz_ps; /* the workload's policy set, when be_known */
};

/* The client as the load balancer sees it. */
struct km_client {
	__u64 netns_cookie;
	__u32 flags;       /* enum km_manage_flags */
	__u32 client_id;   /* consistent-hash key */
	__u32 workload_id; /* the client's own workload, 0 if unknown */
	__u32 pad;
};

static __always_inline int km_addr_is_v4mapped(const struct km_addr *a)
{
	return a->a[0] == 0 && a->a[1] == 0 && a->a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void km_addr_from_v4(struct km_addr *a, __u32 ip4)
{
	a->a[0] = 0;
	a->a[1] = 0;
	a->a[2] = bpf_htonl(0x0000ffff);
	a->a[3] = ip4;
}

static __always_inline int km_addr_eq(const struct km_addr *x, const struct km_addr *y)
{
	return x->a[0] == y->a[0] && x->a[1] == y->a[1] && x->a[2] == y->a[2] &&
	       x->a[3] == y->a[3];
}

/* Whether the calling socket's netns is enrolled; fills the client. */
static __always_inline int km_client_of(void *ctx, struct km_client *c)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);
	struct km_manage_value *mv = bpf_map_lookup_elem(&km_manage, &cookie);

	if (!mv || !(mv->flags & KM_MANAGE_ENROLLED))
		return 0;
	c->netns_cookie = cookie;
	c->flags = mv->flags;
	c->client_id = mv->client_id;
	c->workload_id = mv->workload_id;
	return 1;
}

/* A 64-bit finaliser (splitmix64): spreads client keys over Maglev slots. */
static __always_inline __u64 km_mix64(__u64 x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

/* First priority with endpoints; strict services only ever use priority 0.
 * Returns KM_MAX_PRIO when there is nothing to use. */
static __always_inline __u32 km_pick_prio(const struct km_service_value *svc, __u32 *count)
{
	__u32 p;

	if (svc->flags & KM_SVC_STRICT) {
		*count = svc->ep_count[0];
		return *count ? 0 : KM_MAX_PRIO;
	}
#pragma unroll
	for (p = 0; p < KM_MAX_PRIO; p++) {
		__u32 n = svc->ep_count[p];

		if (n) {
			*count = n;
			return p;
		}
	}
	return KM_MAX_PRIO;
}

static __always_inline __u32 km_endpoint_at(__u32 svc_id, __u32 prio, __u32 index)
{
	struct km_endpoint_key k = {
		.service_id = svc_id,
		.prio = prio,
		.index = index,
	};
	struct km_endpoint_value *v = bpf_map_lookup_elem(&km_endpoint, &k);

	return v ? v->workload_id : 0;
}

/* Session affinity: reuse the client's endpoint while it is fresh and still
 * sits where we left it (removals move the last endpoint into the hole, so a
 * moved or removed endpoint simply fails the check and we pick again). */
static __always_inline int km_affinity_get(const struct km_client *c, __u32 svc_id,
					   const struct km_service_value *svc, __u32 prio,
					   struct km_pick *pick)
{
	struct km_affinity_key k = { .netns_cookie = c->netns_cookie, .service_id = svc_id };
	struct km_affinity_value *v = bpf_map_lookup_elem(&km_affinity, &k);
	__u64 now;

	if (!v || v->prio != prio)
		return 0;
	now = bpf_ktime_get_ns();
	if (now - v->last_used_ns > (__u64)svc->affinity_timeout_s * 1000000000ULL)
		return 0;
	if (km_endpoint_at(svc_id, prio, v->index) != v->workload_id)
		return 0;
	v->last_used_ns = now;
	pick->workload_id = v->workload_id;
	pick->prio = prio;
	pick->index = v->index;
	km_count(KM_STAT_AFFINITY_HIT);
	return 1;
}

static __always_inline void km_affinity_put(const struct km_client *c, __u32 svc_id,
					    const struct km_pick *pick)
{
	struct km_affinity_key k = { .netns_cookie = c->netns_cookie, .service_id = svc_id };
	struct km_affinity_value v = {
		.workload_id = pick->workload_id,
		.prio = pick->prio,
		.index = pick->index,
		.last_used_ns = bpf_ktime_get_ns(),
	};

	bpf_map_update_elem(&km_affinity, &k, &v, BPF_ANY);
}

static __always_inline int km_pick_maglev(const struct km_client *c, __u32 svc_id,
					  struct km_pick *pick)
{
	void *table = bpf_map_lookup_elem(&km_maglev, &svc_id);
	__u64 key = c->client_id ? c->client_id : c->netns_cookie;
	__u32 slot, *wid;

	if (!table || km_maglev_size == 0)
		return 0;
	slot = km_mix64(key) % km_maglev_size;
	wid = bpf_map_lookup_elem(table, &slot);
	if (!wid || !*wid)
		return 0;
	pick->workload_id = *wid;
	pick->prio = 0;
	pick->index = 0;
	return 1;
}

/* Chooses an endpoint of a service by its policy. 0 when none is usable. */
static __always_inline int km_pick_endpoint(const struct km_client *c, __u32 svc_id,
					    struct km_service_value *svc, struct km_pick *pick)
{
	__u32 count = 0, prio, index, wid;

	if (svc->lb_policy == KM_LB_MAGLEV)
		return km_pick_maglev(c, svc_id, pick);

	prio = km_pick_prio(svc, &count);
	if (prio >= KM_MAX_PRIO)
		return 0;

	if ((svc->flags & KM_SVC_AFFINITY) && km_affinity_get(c, svc_id, svc, prio, pick))
		return 1;

	if (svc->lb_policy == KM_LB_ROUND_ROBIN)
		index = __sync_fetch_and_add(&svc->rr_cursor, 1) % count + 1;
	else
		index = bpf_get_prandom_u32() % count + 1;

	wid = km_endpoint_at(svc_id, prio, index);
	if (!wid) {
		/* We read the count just before a removal shrank the list; index 1
		 * exists for as long as the priority has any endpoint. */
		index = 1;
		wid = km_endpoint_at(svc_id, prio, index);
		if (!wid)
			return 0;
	}
	pick->workload_id = wid;
	pick->prio = prio;
	pick->index = index;
	if (svc->flags & KM_SVC_AFFINITY)
		km_affinity_put(c, svc_id, pick);
	return 1;
}

/* The address a backend has in the caller's family. */
static __always_inline int km_backend_addr(const struct km_backend_value *be, int v4,
					   struct km_addr *out)
{
	if (v4) {
		if (!(be->flags & KM_BE_HAS_V4))
			return 0;
		km_addr_from_v4(out, be->ip4);
		return 1;
	}
	if (!(be->flags & KM_BE_HAS_V6))
		return 0;
	out->a[0] = be->ip6[0];
	out->a[1] = be->ip6[1];
	out->a[2] = be->ip6[2];
	out->a[3] = be->ip6[3];
	return 1;
}

static __always_inline __u16 km_target_port(__u32 svc_id, __u32 wid, __u16 port,
					    const struct km_port_value *pv)
{
	__u16 target = pv->target_port ? pv->target_port : port;

	if (pv->flags & KM_PORT_OVERRIDES) {
		struct km_portovr_key k = {
			.service_id = svc_id,
			.workload_id = wid,
			.port = port,
		};
		struct km_portovr_value *ov = bpf_map_lookup_elem(&km_portovr, &k);

		if (ov && ov->target_port)
			target = ov->target_port;
	}
	return target;
}

/*
 * A TCP connection bound for a waypoint goes to one of its pods: a waypoint
 * service's pods are picked by its own load balancing (policy, priorities,
 * affinity, as for any service), a waypoint workload is that pod. The port
 * is the node's waypoint port, where the waypoint reads the PROXY v2 header
 * naming the original destination (wp_msg.c). No usable pod: refused, never
 * sent past the waypoint.
 */
static __always_inline enum km_verdict km_to_waypoint(const struct km_client *c,
						      const struct km_waypoint_ref *wp, int v4,
						      struct km_pick *pick)
{
	struct km_service_value *wsvc;
	struct km_backend_value *be;
	__u32 wid = wp->upstream_id;
	__u16 port = km_waypoint_port();

	if (wp->kind == KM_KIND_SERVICE) {
		__u32 sid = wp->upstream_id;

		wsvc = bpf_map_lookup_elem(&km_service, &sid);
		if (!wsvc || !km_pick_endpoint(c, sid, wsvc, pick))
			goto refuse;
		wid = pick->workload_id;
	}
	be = bpf_map_lookup_elem(&km_backend, &wid);
	if (!be || !port || !km_backend_addr(be, v4, &pick->addr))
		goto refuse;
	pick->workload_id = wid;
	pick->port = port;
	pick->flags = KM_SOCK_REWRITTEN | KM_SOCK_WAYPOINT;
	km_count(KM_STAT_WAYPOINT_REWRITE);
	return KM_REWRITE;
refuse:
	km_count(KM_STAT_NO_WAYPOINT);
	return KM_REFUSE;
}

static __always_inline enum km_verdict km_translate_service(const struct km_client *c,
							    __u32 svc_id, __u16 port, int v4, int tcp,
							    struct km_pick *pick)
{
	struct km_service_value *svc = bpf_map_lookup_elem(&km_service, &svc_id);
	struct km_port_key pk = { .service_id = svc_id, .port = port };
	struct km_port_value *pv;
	struct km_backend_value *be;

	if (!svc) {
		km_count(KM_STAT_NO_ENDPOINT);
		return KM_REFUSE;
	}
	pick->service_id = svc_id;

	/* Waypoints speak TCP only: a UDP datagram or connected UDP socket is
	 * translated as if the service had no waypoint. A waypoint's own pods
	 * are never sent to a waypoint (they would loop through themselves). */
	if (tcp && svc->waypoint.kind && !(c->flags & KM_MANAGE_WAYPOINT))
		return km_to_waypoint(c, &svc->waypoint, v4, pick);

	pv = bpf_map_lookup_elem(&km_port, &pk);
	if (!pv) {
		km_count(KM_STAT_NO_PORT);
		return KM_REFUSE;
	}
	if (!km_pick_endpoint(c, svc_id, svc, pick)) {
		km_count(KM_STAT_NO_ENDPOINT);
		return KM_REFUSE;
	}
	be = bpf_map_lookup_elem(&km_backend, &pick->workload_id);
	if (!be) {
		km_count(KM_STAT_NO_BACKEND);
		return KM_REFUSE;
	}
	if (!km_backend_addr(be, v4, &pick->addr)) {
		km_count(KM_STAT_FAMILY_MISMATCH);
		return KM_REFUSE;
	}
	pick->authz_ps = be->authz_ps;
	pick->be_known = 1;
	pick->port = km_target_port(svc_id, pick->workload_id, port, pv);
	pick->flags = KM_SOCK_REWRITTEN;
	km_count(KM_STAT_SERVICE_REWRITE);
	return KM_REWRITE;
}

/* A pod addressed directly: left alone unless it has a waypoint (TCP from
 * a pod that is not itself a waypoint's, as for services). */
static __always_inline enum km_verdict km_translate_workload(const struct km_client *c,
							     __u32 wid, int v4, int tcp,
							     struct km_pick *pick)
{
	struct km_backend_value *be;

	/* Passing through, the caller still wants to know whose address it is
	 * (authorization). */
	pick->workload_id = wid;
	if (!tcp || (c->flags & KM_MANAGE_WAYPOINT))
		return KM_PASS;
	be = bpf_map_lookup_elem(&km_backend, &wid);
	pick->authz_ps = be ? be->authz_ps : 0;
	pick->be_known = 1;
	if (!be || !be->waypoint.kind)
		return KM_PASS;
	return km_to_waypoint(c, &be->waypoint, v4, pick);
}

/* dst is the 16-byte destination, port in host order, v4 whether the socket
 * speaks IPv4 (AF_INET or a v4-mapped destination on AF_INET6), tcp whether
 * it is a TCP socket (only TCP is sent to waypoints). */
static __always_inline enum km_verdict km_translate(const struct km_client *c,
						    const struct km_addr *dst, __u16 port,
						    int v4, int tcp, struct km_pick *pick)
{
	struct km_frontend_value *fe = bpf_map_lookup_elem(&km_frontend, dst);

	if (!fe)
		return KM_PASS;
	if (fe->kind == KM_KIND_SERVICE)
		return km_translate_service(c, fe->upstream_id, port, v4, tcp, pick);
	if (fe->kind == KM_KIND_WORKLOAD)
		return km_translate_workload(c, fe->upstream_id, v4, tcp, pick);
	return KM_PASS;
}

#endif
