/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Key and value layouts shared by every kmesh BPF program and the Go side.
 * This header is their only definition: `make generate` writes bpf/layout's
 * Go types from the compiled object's BTF. Every struct is naturally aligned
 * with explicit padding (fields named pad become blank in Go). A field that
 * holds an enum's values is declared with that enum's type, packed to the
 * field's width, so the enum reaches BTF and Go gets a typed field.
 * Enums named *_flags are bit sets.
 *
 * Bump KM_LAYOUT_VERSION whenever a struct or a map's meaning changes: the
 * loader then replaces pinned maps instead of misreading them.
 */
#ifndef KM_TYPES_H
#define KM_TYPES_H

#include <linux/types.h>

#define KM_LAYOUT_VERSION 7

/* Locality priorities: Istio has six routing-preference scopes, so seven
 * levels (all match .. none match); eight keeps the array aligned. */
#define KM_MAX_PRIO 8

/* An address is always 16 bytes: IPv6, or IPv4 mapped as ::ffff:a.b.c.d, so
 * one frontend lookup serves both families. */
struct km_addr {
	__u32 a[4];
};

/* km_frontend: destination address -> what lives there. 16 + 8 bytes. */
struct km_frontend_key {
	struct km_addr addr;
};

enum __attribute__((packed)) km_upstream_kind {
	KM_KIND_SERVICE = 1,
	KM_KIND_WORKLOAD = 2,
};

struct km_frontend_value {
	__u32 upstream_id; /* service id or workload id */
	enum km_upstream_kind kind;
	__u8 pad[3];
};

/* Where a destination's TCP connections go instead: a waypoint service
 * (its pods, load-balanced as any service's) or a waypoint workload. By
 * reference, not address: the waypoint's own load balancing picks the pod,
 * and its users need no write when its pods or addresses change. 8 bytes. */
struct km_waypoint_ref {
	__u32 upstream_id; /* service id or workload id; 0: the waypoint is gone, refuse */
	enum km_upstream_kind kind; /* 0: no waypoint */
	__u8 pad[3];
};

/* km_service: service id -> load-balancing state. 52 bytes. */
enum __attribute__((packed)) km_lb_policy {
	KM_LB_RANDOM = 0,
	KM_LB_ROUND_ROBIN = 1,
	KM_LB_MAGLEV = 2,
};

enum __attribute__((packed)) km_service_flags {
	KM_SVC_STRICT = 1 << 0,   /* locality strict: never leave priority 0 */
	KM_SVC_AFFINITY = 1 << 2, /* session affinity, see affinity_timeout_s */
};

struct km_service_value {
	__u32 ep_count[KM_MAX_PRIO]; /* dense endpoints per priority, 1..n */
	__u32 rr_cursor;             /* round robin; bumped atomically by BPF */
	__u32 affinity_timeout_s;
	enum km_lb_policy lb_policy;
	enum km_service_flags flags;
	__u16 pad;
	struct km_waypoint_ref waypoint; /* TCP clients go there instead */
};

/* km_port: (service, service port) -> target port. 8 + 4 bytes. */
struct km_port_key {
	__u32 service_id;
	__u16 port; /* host order */
	__u16 pad;
};

enum __attribute__((packed)) km_port_flags {
	KM_PORT_OVERRIDES = 1 << 0, /* some backends remap it: see km_portovr */
};

struct km_port_value {
	__u16 target_port; /* host order; 0 means same as the service port */
	enum km_port_flags flags;
	__u8 pad;
};

/* km_portovr: (service, workload, service port) -> the workload's own target
 * port (Istio's Workload.services port lists). 12 + 4 bytes. */
struct km_portovr_key {
	__u32 service_id;
	__u32 workload_id;
	__u16 port;
	__u16 pad;
};

struct km_portovr_value {
	__u16 target_port;
	__u16 pad;
};

/* km_endpoint: (service, priority, index) -> workload id. Indexes are dense,
 * 1..ep_count[prio]; writers never leave a hole. 12 + 4 bytes. */
struct km_endpoint_key {
	__u32 service_id;
	__u32 prio;
	__u32 index;
};

struct km_endpoint_value {
	__u32 workload_id;
};

/* km_backend: workload id -> addresses and waypoint. 40 bytes. */
enum __attribute__((packed)) km_backend_flags {
	KM_BE_HAS_V4 = 1 << 0,
	KM_BE_HAS_V6 = 1 << 1,
};

struct km_backend_value {
	__u32 ip4;  /* network order */
	__u32 ip6[4];
	__u32 identity_id;
	enum km_backend_flags flags;
	__u8 pad[3];
	struct km_waypoint_ref waypoint; /* TCP connects to its own addresses go there */
	__u32 authz_ps; /* policy set guarding connections to it; 0: none */
};

/* km_manage: netns cookie -> enrollment. 8 + 16 bytes. This layout is a
 * promise: enrollment survives upgrades because the loader copies this map
 * whenever its key and value sizes are unchanged. Only grow it by using the
 * reserved field. */
enum km_manage_flags {
	KM_MANAGE_ENROLLED = 1 << 0,
	KM_MANAGE_WAYPOINT = 1 << 1, /* a waypoint's pod: never sent to a waypoint, never accelerated */
};

struct km_manage_value {
	enum km_manage_flags flags;
	__u32 client_id;   /* stable client key for consistent hashing; 0: use cookie */
	__u32 workload_id; /* the pod's own workload (its identity); 0: not known yet */
	__u32 reserved;
};

/* km_affinity: (client netns, service) -> sticky endpoint. 16 + 24 bytes. */
struct km_affinity_key {
	__u64 netns_cookie;
	__u32 service_id;
	__u32 pad;
};

struct km_affinity_value {
	__u32 workload_id;
	__u32 prio;
	__u32 index;
	__u32 pad;
	__u64 last_used_ns;
};

/* km_udp_rev: replies on a UDP socket that talks to more than one service. */
struct km_udp_rev_key {
	__u64 sock_cookie;
	struct km_addr backend;
	__u16 backend_port; /* network order */
	__u16 pad[3];
};

struct km_udp_rev_value {
	struct km_addr orig;
	__u16 orig_port; /* network order */
	__u16 pad[3];
};

/*
 * Authorization. Policies are compiled per policy set (the policies guarding
 * one group of workloads) into equivalence classes of each connection
 * attribute and a verdict per combination of classes, so a new connection
 * costs five lookups however many policies there are.
 */

/* km_authz_ps: policy set -> classes of attributes not found in the maps.
 * When no policy of the set names a source (destination) address, the class
 * only depends on the family and the trie lookup is skipped. */
enum km_authz_ps_flags {
	KM_AUTHZ_SRC_BY_FAMILY = 1 << 0,
	KM_AUTHZ_DST_BY_FAMILY = 1 << 1,
};

struct km_authz_ps_value {
	__u16 default_ident;
	__u16 default_port;
	__u16 src4, src6; /* classes of the family roots */
	__u16 dst4, dst6;
	enum km_authz_ps_flags flags;
};

/* km_authz_ident: (set, source identity) -> identity class. */
struct km_authz_ident_key {
	__u32 ps;
	__u32 identity;
};

struct km_authz_class {
	__u16 cls;
	__u16 pad;
};

/* km_authz_src / km_authz_dst (LPM): (set, address prefix) -> class. The
 * prefix length counts the 32 bits of ps first. Every set has a /0 entry. */
struct km_authz_cidr_key {
	__u32 prefixlen;
	__u32 ps;
	struct km_addr addr;
};

/* km_authz_port: (set, destination port) -> class. */
struct km_authz_port_key {
	__u32 ps;
	__u16 port; /* host order */
	__u16 pad;
};

/* km_authz_verdict: (set, four classes) -> decision. */
struct km_authz_verdict_key {
	__u32 ps;
	__u16 ident;
	__u16 src;
	__u16 dst;
	__u16 port;
};

enum km_authz_flags {
	KM_AUTHZ_DENY = 1 << 0,
	KM_AUTHZ_DRYRUN_DENY = 1 << 1, /* a dry-run policy would deny */
};

struct km_authz_verdict {
	enum km_authz_flags flags;
	__u32 policy;     /* deciding policy id (0: allowed, no ALLOW policy) */
	__u32 dry_policy; /* dry-run policy that would deny */
	__u32 pad;
};

/* km_authz_stats (per CPU): (policy, outcome) -> connections. */
enum km_authz_outcome {
	KM_AUTHZ_OUT_ALLOW = 0,
	KM_AUTHZ_OUT_DENY = 1,
	KM_AUTHZ_OUT_DRYRUN_DENY = 2,
};

struct km_authz_stat_key {
	__u32 policy;
	enum km_authz_outcome outcome;
};

/* km_config: one entry of knobs the daemon sets at run time. */
enum km_feature_flags {
	KM_FEAT_TELEMETRY = 1 << 0, /* connection records and events (sockops) */
	KM_FEAT_SOCKMAP = 1 << 1,   /* same-node acceleration (sockhash + sk_msg) */
};

struct km_config_value {
	__u32 layout_version;
	__u32 maglev_size;   /* slots per table in km_maglev's inner maps */
	enum km_feature_flags features;
	__u16 waypoint_port; /* host order: where every waypoint pod reads PROXY v2 */
	__u16 pad;
};

/* A TCP connection as one end sees it. Addresses as in km_addr, ports in
 * host order. Keys km_sockhash (each socket under its own tuple: its peer is
 * found under the tuple reversed). 40 bytes. */
struct km_tuple {
	struct km_addr local;
	struct km_addr remote;
	__u16 local_port;
	__u16 remote_port;
	__u32 pad;
};

/* The connection record of one end of an enrolled TCP connection, for
 * telemetry and acceleration (in km_tcp_sock). 96 bytes. */
enum __attribute__((packed)) km_conn_role {
	KM_ROLE_CLIENT = 1, /* connect()ed: reports as the source */
	KM_ROLE_SERVER = 2, /* accept()ed: reports as the destination */
};

enum __attribute__((packed)) km_conn_flags {
	KM_CONN_REWRITTEN = 1 << 0, /* orig/service_id are set */
	KM_CONN_SOCKHASH = 1 << 1,  /* this socket is in km_sockhash */
	KM_CONN_REDIRECT = 1 << 2,  /* its sends go to the peer past TCP */
	KM_CONN_TCP_ONLY = 1 << 3,  /* its sends stay on TCP for good */
	KM_CONN_CLOSED = 1 << 4,    /* reported closed; iterator skips it */
	KM_CONN_TELEMETRY = 1 << 5, /* opened with telemetry on */
	KM_CONN_REDIRECT_IN = 1 << 6, /* events only: its peer's sends came past TCP */
};

struct km_conn_value {
	__u64 cookie;     /* socket cookie: the connection end's id */
	__u64 start_ns;   /* bpf_ktime_get_ns at established */
	__u64 redir_sent; /* bytes this socket sent to its peer past TCP */
	struct km_addr local;
	struct km_addr remote;
	struct km_addr orig; /* the address the client dialled (service VIP) */
	__u16 local_port;
	__u16 remote_port;
	__u16 orig_port;
	enum km_conn_role role;
	enum km_conn_flags flags;
	__u32 service_id;
	__u32 workload_id; /* the backend the connect hook chose */
	__u32 acked_base;  /* TCP's bytes_acked at established (the SYN) */
	__u32 pad;
};

/* What a socket's destination was before the rewrite, and what it became
 * (the connect hook's), and for an enrolled TCP end its connection record
 * (sockops'). TCP sockets keep it in km_tcp_sock under their cookie, UDP
 * sockets in km_sock (socket-local storage). One value per socket: a
 * second one cost an allocation at established and a free on every client
 * connection. 56 + 96 bytes. */
enum km_sock_flags {
	KM_SOCK_REWRITTEN = 1 << 0,
	KM_SOCK_WAYPOINT = 1 << 1,   /* sent to a waypoint: its first bytes get a PROXY v2 header */
	KM_SOCK_CONNECTING = 1 << 2, /* km_tcp_sock: TCP got to send the SYN, so the close callback will come */
	KM_SOCK_WAYPOINT_POD = 1 << 3, /* a socket of a waypoint's own pod: never accelerated */
	KM_SOCK_HEADER_SENT = 1 << 4,  /* the PROXY v2 header went out */
};

struct km_sock_value {
	struct km_addr orig;
	struct km_addr backend;
	__u16 orig_port;    /* network order, as in bpf_sock_addr */
	__u16 backend_port; /* network order */
	__u32 service_id;
	__u32 workload_id;
	__u32 prio;
	__u32 index;
	enum km_sock_flags flags;
	struct km_conn_value conn; /* zero until sockops sees it established */
};

/* km_events (ring buffer) and the TCP iterator: a connection end at a
 * point in its life. Byte counts are payload totals since established
 * (TCP's counters less SYN and FIN, plus what went past TCP), so a lost
 * record costs no bytes. */
enum __attribute__((packed)) km_event_type {
	KM_EV_OPEN = 1, /* not sent any more (see sockops.c); the daemon still reads it */
	KM_EV_CLOSE = 2,
	KM_EV_SNAPSHOT = 3, /* from the iterator: still open */
};

enum __attribute__((packed)) km_conn_end {
	KM_END_NONE = 0,    /* still open */
	KM_END_FIN = 1,     /* orderly close, both FINs */
	KM_END_RESET = 2,   /* reset by the peer */
	KM_END_ABORT = 3,   /* aborted here (close with unread data, SO_LINGER 0) */
	KM_END_TIMEOUT = 4, /* retransmissions or keepalives gave up */
	KM_END_ERROR = 5,   /* any other socket error */
};

struct km_conn_event {
	struct km_conn_value conn;
	__u64 now_ns;
	__u64 bytes_sent;     /* payload acknowledged by the peer */
	__u64 bytes_received;
	__u32 srtt_us;
	__u32 total_retrans;
	enum km_event_type type;
	enum km_conn_end end;
	__u8 old_state; /* TCP state before CLOSE (close events) */
	__u8 pad;
	__u32 sk_err;
};

/* km_stats: per-CPU counters, index by enum km_stat. The daemon exports
 * each as kmesh_datapath_events_total{event=<name less KM_STAT_, lower
 * case>}: a rename here renames the metric. */
enum km_stat {
	KM_STAT_SERVICE_REWRITE = 0,
	KM_STAT_WAYPOINT_REWRITE,
	KM_STAT_NO_ENDPOINT,
	KM_STAT_NO_PORT,
	KM_STAT_NO_BACKEND,
	KM_STAT_FAMILY_MISMATCH,
	KM_STAT_UDP_REVERSE,
	KM_STAT_AFFINITY_HIT,
	KM_STAT_TC_SEEN,
	KM_STAT_AUTHZ_ALLOW,
	KM_STAT_AUTHZ_DENY,
	KM_STAT_AUTHZ_RESET_SENT,
	KM_STAT_AUTHZ_CONNECT_DENY,
	KM_STAT_CONN_OPEN,      /* connection ends recorded */
	KM_STAT_CONN_CLOSE,
	KM_STAT_EVENTS_LOST,    /* ring buffer full: an event was dropped */
	KM_STAT_SOCKHASH_ADD,   /* sockets put in km_sockhash */
	KM_STAT_SOCKHASH_FAIL,
	KM_STAT_MSG_REDIRECT,   /* sendmsg calls sent to the peer past TCP */
	KM_STAT_MSG_PASS,       /* sendmsg calls left on TCP */
	KM_STAT_TCP_SOCK_FULL,  /* km_tcp_sock refused a socket: it goes unrewritten-for-getpeername and unrecorded */
	KM_STAT_NO_WAYPOINT,    /* a connect bound for a waypoint refused: no usable waypoint pod */
	KM_STAT_WP_SOCK_FULL,   /* km_wp_sock refused a socket: it reaches its waypoint without a header */
	KM_STAT_WP_HEADER,      /* PROXY v2 headers written */
	KM_STAT_WP_HEADER_FAIL, /* a first send failed: no room to put the header in front */
	KM_STAT_WP_NO_HEADER,   /* bytes went before established (TCP Fast Open): no header, not mid-stream */
	KM_STAT_UDP_ENDPOINT_GONE, /* connected UDP sockets closed: their endpoint left the service */
	KM_STAT_MAX,
};

#endif
