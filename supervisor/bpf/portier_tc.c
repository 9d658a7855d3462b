// SPDX-License-Identifier: GPL-2.0
/* Portier tc ingress data path: unicast IPv6 frames for a neighbor the
 * supervisor's cache holds behind another member of the same group are
 * rewritten (both MACs) and redirected to that member's egress.  Everything
 * else (ND, multicast, misses, frames for the host, too big for the egress)
 * returns TC_ACT_OK so the stack and the workers see it unchanged.  The hop
 * limit is deliberately left alone: the proxy is not a router (RFC 4389). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ipv6.h>
#include <linux/in6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Per ingress member: which group it belongs to; 0 means not a member. */
struct member {
	__u32 group;
	__u32 enabled;
};

struct route_key {
	__u32 group;
	__u8 dst[16];
};

struct route {
	__u32 ifindex;  /* egress member */
	__u32 mtu;      /* egress MTU; larger frames go up to the stack */
	__u8 dmac[6];   /* neighbor's MAC */
	__u8 smac[6];   /* egress interface's MAC */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);             /* ingress ifindex */
	__type(value, struct member);
} members SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct route_key);
	__type(value, struct route);
} routes SEC(".maps");

SEC("tc")
int portier_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6;
	struct member *m;
	struct route_key key = {};
	struct route *r;
	__u32 ifindex = skb->ingress_ifindex;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IPV6))
		return TC_ACT_OK;
	if (eth->h_dest[0] & 1)       /* multicast: ND and friends go up */
		return TC_ACT_OK;
	ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > end)
		return TC_ACT_OK;
	if (ip6->nexthdr == 58)       /* ICMPv6 (ND unicast too) stays with workers */
		return TC_ACT_OK;
	m = bpf_map_lookup_elem(&members, &ifindex);
	if (!m || !m->enabled)
		return TC_ACT_OK;
	key.group = m->group;
	__builtin_memcpy(key.dst, &ip6->daddr, 16);
	r = bpf_map_lookup_elem(&routes, &key);
	if (!r || r->ifindex == ifindex)
		return TC_ACT_OK;     /* miss, or the neighbor is on this link */
	if (skb->len - sizeof(*eth) > r->mtu)
		return TC_ACT_OK;     /* the stack sends Packet Too Big */
	__builtin_memcpy(eth->h_dest, r->dmac, 6);
	__builtin_memcpy(eth->h_source, r->smac, 6);
	return bpf_redirect(r->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
