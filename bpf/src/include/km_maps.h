/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map definitions. Sizes here are defaults only: the Go loader sets every
 * max_entries from its configuration before loading, and pins the maps itself
 * so it can decide between reusing and replacing a pinned set.
 *
 * Large hash maps are created without preallocation: memory follows what the
 * daemon writes rather than the configured ceiling, and an element replaced
 * by an update is freed only after readers are done with it (RCU), so a
 * connect() never reads a half-reused entry.
 */
#ifndef KM_MAPS_H
#define KM_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "km_types.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct km_manage_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_manage SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct km_frontend_key);
	__type(value, struct km_frontend_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_frontend SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, struct km_service_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_service SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct km_port_key);
	__type(value, struct km_port_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_port SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct km_portovr_key);
	__type(value, struct km_portovr_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_portovr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__type(key, struct km_endpoint_key);
	__type(value, struct km_endpoint_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_endpoint SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, __u32);
	__type(value, struct km_backend_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_backend SEC(".maps");

/* One Maglev lookup table per consistent-hash service: slot -> workload id.
 * The table size (a prime) is fixed per load; see km_maglev_size. */
struct km_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4093);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__array(values, struct km_maglev_inner);
} km_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct km_affinity_key);
	__type(value, struct km_affinity_value);
} km_affinity SEC(".maps");

/* UDP sockets' km_sock_value (socket-local storage): the backend a socket
 * was given and the address it sent to, for its next datagrams and its
 * replies. A UDP socket has no close callback that could delete an element
 * of a hash; its storage goes with it. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct km_sock_value);
} km_sock SEC(".maps");

/* TCP sockets' km_sock_value, under their socket cookie, from connect (a
 * rewritten client) or established (any other enrolled end) until the close
 * callback deletes it. Socket-local storage cost each client connection
 * ~3 us (a kmalloc, a memory-cgroup charge and an RCU-deferred free with
 * the socket, mostly outside any program); a hash element without
 * preallocation comes from a per-CPU cache. The daemon's sweep reaches the
 * sockets through iter/tcp in each pod's namespace and clears what a
 * connect that failed before TCP started left behind. Full: counted in
 * KM_STAT_TCP_SOCK_FULL. */
#ifndef KM_TCP_SOCK_MAX
#define KM_TCP_SOCK_MAX 262144
#endif
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, KM_TCP_SOCK_MAX);
	__type(key, __u64);
	__type(value, struct km_sock_value);
} km_tcp_sock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct km_udp_rev_key);
	__type(value, struct km_udp_rev_value);
} km_udp_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct km_config_value);
} km_config SEC(".maps");

/* Connection events for the daemon: struct km_conn_event records. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} km_events SEC(".maps");

/* Enrolled sockets on this node, each under its own tuple. The sk_msg
 * program sends a socket's data straight to the socket found under the
 * reversed tuple: its peer, when that peer is enrolled on this node too. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct km_tuple);
	__type(value, __u64);
} km_sockhash SEC(".maps");

/* Clients bound for a waypoint that have not sent yet, under their socket
 * cookie (sockops files them at established). wp_msg.c writes the PROXY v2
 * header in front of a socket's first bytes and takes it out again, so
 * this map holds only connections that have not spoken yet, and the
 * socket's later sends go straight to TCP. Full: KM_STAT_WP_SOCK_FULL. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} km_wp_sock SEC(".maps");

/* Bytes a socket received past TCP, under its tuple: its peer's sk_msg
 * program adds to it (sk_msg cannot reach another socket's storage). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct km_tuple);
	__type(value, __u64);
} km_redir_in SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct km_authz_ps_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_authz_ps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct km_authz_ident_key);
	__type(value, struct km_authz_class);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_authz_ident SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct km_authz_cidr_key);
	__type(value, struct km_authz_class);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_authz_src SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct km_authz_cidr_key);
	__type(value, struct km_authz_class);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_authz_dst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct km_authz_port_key);
	__type(value, struct km_authz_class);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_authz_port SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__type(key, struct km_authz_verdict_key);
	__type(value, struct km_authz_verdict);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_authz_verdict SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct km_authz_stat_key);
	__type(value, __u64);
} km_authz_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KM_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} km_stats SEC(".maps");

/* The layout these programs were built for; the loader checks it against
 * its own, so objects and Go can never disagree silently. */
volatile const __u32 km_layout_version = KM_LAYOUT_VERSION;

/* Set by the loader before load: the Maglev table size (prime). */
volatile const __u32 km_maglev_size = 4093;

/* Set by the loader: ring buffer fill level (bytes) above which a new event
 * wakes the reader at once; below it the reader drains on its own tick, so
 * a busy node does not pay a wakeup per connection. */
volatile const __u64 km_events_wakeup = 1 << 20;

static __always_inline void km_count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&km_stats, &stat);

	if (v)
		*v += 1;
}

static __always_inline __u32 km_features(void)
{
	__u32 zero = 0;
	struct km_config_value *c = bpf_map_lookup_elem(&km_config, &zero);

	return c ? c->features : 0;
}

/* The port every waypoint pod listens on for connections with a PROXY v2
 * header (0: not set, no waypoint is usable). */
static __always_inline __u16 km_waypoint_port(void)
{
	__u32 zero = 0;
	struct km_config_value *c = bpf_map_lookup_elem(&km_config, &zero);

	return c ? c->waypoint_port : 0;
}

#endif
