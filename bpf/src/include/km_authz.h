/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * L4 authorization: one decision per new connection toward a workload that
 * has a policy set. The daemon compiles Istio's Authorization semantics into
 * classes (see km_types.h); here we only look them up.
 */
#ifndef KM_AUTHZ_H
#define KM_AUTHZ_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "km_maps.h"

/* What decided a connection. */
struct km_authz_decision {
	int deny;
	__u32 policy;
};

static __always_inline void km_authz_count(__u32 policy, __u32 outcome)
{
	struct km_authz_stat_key k = { .policy = policy, .outcome = outcome };
	__u64 *v = bpf_map_lookup_elem(&km_authz_stats, &k);

	if (v) {
		*v += 1;
		return;
	}
	__u64 one = 1;
	bpf_map_update_elem(&km_authz_stats, &k, &one, BPF_NOEXIST);
}

static __always_inline __u16 km_authz_cidr_class(void *map, __u32 ps, const struct km_addr *a)
{
	struct km_authz_cidr_key k = { .prefixlen = 32 + 128, .ps = ps, .addr = *a };
	struct km_authz_class *c = bpf_map_lookup_elem(map, &k);

	return c ? c->cls : 0;
}

/* Decides a connection from src (identity 0: unknown) to dst:port of a
 * workload guarded by policy set ps. Returns 1 when it must be refused. A
 * policy set whose tables are incomplete fails closed. */
static __always_inline int km_authz_decide(__u32 ps, __u32 identity, const struct km_addr *src,
					   const struct km_addr *dst, __u16 port)
{
	struct km_authz_ps_value *set = bpf_map_lookup_elem(&km_authz_ps, &ps);
	struct km_authz_ident_key ik = { .ps = ps, .identity = identity };
	struct km_authz_port_key pk = { .ps = ps, .port = port };
	struct km_authz_verdict_key vk = { .ps = ps };
	struct km_authz_class *c;
	struct km_authz_verdict *v;

	if (!set) {
		km_count(KM_STAT_AUTHZ_DENY);
		return 1;
	}
	c = bpf_map_lookup_elem(&km_authz_ident, &ik);
	vk.ident = c ? c->cls : set->default_ident;
	c = bpf_map_lookup_elem(&km_authz_port, &pk);
	vk.port = c ? c->cls : set->default_port;
	if (set->flags & KM_AUTHZ_SRC_BY_FAMILY)
		vk.src = km_addr_is_v4mapped(src) ? set->src4 : set->src6;
	else
		vk.src = km_authz_cidr_class(&km_authz_src, ps, src);
	if (set->flags & KM_AUTHZ_DST_BY_FAMILY)
		vk.dst = km_addr_is_v4mapped(dst) ? set->dst4 : set->dst6;
	else
		vk.dst = km_authz_cidr_class(&km_authz_dst, ps, dst);

	v = bpf_map_lookup_elem(&km_authz_verdict, &vk);
	if (!v) {
		km_count(KM_STAT_AUTHZ_DENY);
		return 1;
	}
	if (v->flags & KM_AUTHZ_DRYRUN_DENY)
		km_authz_count(v->dry_policy, KM_AUTHZ_OUT_DRYRUN_DENY);
	if (v->flags & KM_AUTHZ_DENY) {
		km_authz_count(v->policy, KM_AUTHZ_OUT_DENY);
		km_count(KM_STAT_AUTHZ_DENY);
		return 1;
	}
	km_authz_count(v->policy, KM_AUTHZ_OUT_ALLOW);
	km_count(KM_STAT_AUTHZ_ALLOW);
	return 0;
}

/* The identity and policy set of whoever owns an address. */
static __always_inline struct km_backend_value *km_workload_at(const struct km_addr *a)
{
	struct km_frontend_value *fe = bpf_map_lookup_elem(&km_frontend, a);

	if (!fe || fe->kind != KM_KIND_WORKLOAD)
		return 0;
	return bpf_map_lookup_elem(&km_backend, &fe->upstream_id);
}

#endif
