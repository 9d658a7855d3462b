// SPDX-License-Identifier: GPL-2.0
/* Portier's tc ingress program (clsact ingress, direct action).
 *
 * Two jobs, both from maps the supervisor fills:
 * - forwarding: a unicast IPv6 frame for a neighbor the supervisor's cache holds
 *   behind another member of the ingress's group gets both MACs rewritten and is
 *   redirected to that member; off-link destinations from a downstream member go to
 *   the group's router.  Only the Ethernet header changes: the proxy is not a router,
 *   the hop limit stays (RFC 4389).
 * - the NS responder: a multicast NS for a fresh neighbor behind another member is
 *   answered with the very NA portier/answers.py builds, sent out of the ingress, and
 *   the NS itself still goes up unchanged.
 * Everything else returns TC_ACT_OK untouched: the stack and the Python workers
 * decide it (ND, multicast, misses, foreign sources, too big, anything odd).  Going up
 * is always correct, only slower, so every doubt goes up.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* --- the maps (the supervisor packs these with Python struct: keep the layout) --- */

#define MEMBER_ENABLED    1u
#define MEMBER_HAS_ROUTER 2u   /* downstream member whose group's router is known */

struct member {                /* members: key __u32 ingress ifindex */
	__u32 group;           /* the supervisor's number for the group, never 0 */
	__u32 flags;
	__u8 mac[6];           /* Ethernet source and TLLA of the kernel's NAs */
	__u8 pad[2];
	__u8 router[16];       /* with MEMBER_HAS_ROUTER: where off-link goes */
};

struct route_key {
	__u32 group;
	__u8 addr[16];
};

#define ROUTE_CHECKING 1u      /* an owner check is pending (see answer_ns) */
#define ROUTE_ROUTER   2u      /* the neighbor is a router: R flag in the NA */
/* The egress is a veth whose peer lives in another network namespace: the frame goes
 * straight into the peer's ingress (bpf_redirect_peer), skipping the egress's transmit
 * path and the backlog queue, so forwarding costs little more than the wire.  Tools on
 * the egress itself (tcpdump, tc egress) do not see these frames. */
#define ROUTE_PEER     4u

struct route {
	__u32 ifindex;         /* egress member */
	__u32 mtu;             /* egress MTU: a larger IPv6 packet goes up */
	__u8 dmac[6];          /* the neighbor's MAC */
	__u8 smac[6];          /* the egress interface's MAC */
	__u32 flags;
	__u32 pad;
	__u64 fresh_until_ns;  /* bpf_ktime_get_ns() before this: answerable */
};

struct owner {                 /* owners: key route_key, a protected address */
	__u32 ifindex;         /* the member it belongs to (0: one not forwarding now) */
	__u8 mac[6];           /* and the MAC behind that member */
	__u8 pad[2];
};

struct prefix_key {            /* onlink: prefixlen = 32 + the prefix length */
	__u32 prefixlen;
	__u32 group;
	__u8 addr[16];
};

_Static_assert(sizeof(struct member) == 32, "member layout");
_Static_assert(sizeof(struct route_key) == 20, "route_key layout");
_Static_assert(sizeof(struct route) == 40, "route layout");
_Static_assert(sizeof(struct owner) == 12, "owner layout");
_Static_assert(sizeof(struct prefix_key) == 24, "prefix_key layout");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct member);
} members SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct route_key);
	__type(value, struct route);
} routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct route_key);
	__type(value, struct owner);
} owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__type(key, struct prefix_key);
	__type(value, __u8);
} onlink SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);  /* answer NS only while bpf_ktime_get_ns() < this */
} liveness SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);  /* NAs sent */
} answered SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);  /* frames redirected to another member */
} forwarded SEC(".maps");

/* Fair sharing (portier/fairshare.py): each member may have MEMBER_WORK_PER_S answers
 * sent on its behalf, in bursts of MEMBER_WORK_BURST, so that one guest flooding NS
 * cannot spend the kernel's answers of every other guest.  The bucket is kept as the
 * time its next token is due (a GCRA), per CPU and per ingress: no locks, and a member
 * whose NS reach several CPUs gets at most that many times the rate. */
#define MEMBER_WORK_PER_S 50
#define MEMBER_WORK_BURST 100
#define ANSWER_INTERVAL_NS (1000000000ull / MEMBER_WORK_PER_S)

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);    /* ingress ifindex */
	__type(value, __u64);  /* when the member's next answer token is due */
} answer_pace SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);  /* NAs not sent: the member's bucket was empty */
} answers_limited SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);  /* VLAN-tagged frames seen on a member (never forwarded) */
} tagged SEC(".maps");

/* --- frame offsets (Ethernet + IPv6, as portier/frame.py names them) --- */

#define L4_OFF (ETH_HLEN + 40)
#define NH_ICMPV6 58
#define ND_FIRST 133           /* RS, RA, NS, NA, Redirect */
#define ND_LAST 137
#define NS_TYPE 135
#define NA_TYPE 136
#define ND_HOP_LIMIT 255
#define OPT_SLLA 1
#define OPT_TLLA 2
#define NA_FLAG_ROUTER 0x80
#define NA_FLAG_SOLICITED 0x40
/* The one NS shape answered: ICMPv6 header, reserved, target, one 8-byte SLLA. */
#define NS_ICMP_LEN 32
#define NS_FRAME_LEN (L4_OFF + NS_ICMP_LEN)
#define MAX_EXT_HEADERS 8      /* as many as portier/frame.py walks */

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return !((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) |
		 (a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5]));
}

static __always_inline int is_unspecified(const __u8 *a)
{
	__u32 w[4];

	__builtin_memcpy(w, a, 16);
	return !(w[0] | w[1] | w[2] | w[3]);
}

static __always_inline int is_ext_header(__u8 nh)
{
	/* Hop-by-Hop, Routing, Fragment, AH, Destination Options */
	return nh == 0 || nh == 43 || nh == 44 || nh == 51 || nh == 60;
}

static __always_inline __u16 csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* The ones'-complement sum of the ICMPv6 pseudo-header and message in buf (a whole
 * NS_FRAME_LEN frame), in the buffer's byte order. */
static __always_inline __u16 icmp6_sum(__u8 *buf)
{
	__be32 tail[2] = { bpf_htonl(NS_ICMP_LEN), bpf_htonl(NH_ICMPV6) };
	__s64 sum;

	sum = bpf_csum_diff(0, 0, (__be32 *)(buf + ETH_HLEN + 8), 32, 0);
	if (sum < 0)
		return 0;
	sum = bpf_csum_diff(0, 0, tail, sizeof(tail), (__wsum)sum);
	if (sum < 0)
		return 0;
	sum = bpf_csum_diff(0, 0, (__be32 *)(buf + L4_OFF), NS_ICMP_LEN, (__wsum)sum);
	if (sum < 0)
		return 0;
	return csum_fold(sum);
}

/* One token from the ingress's bucket, if it has one. */
static __always_inline int answer_paced(__u32 ifindex, __u64 now)
{
	__u64 *due = bpf_map_lookup_elem(&answer_pace, &ifindex);
	__u64 next, *limited;
	__u32 zero = 0;

	if (!due) {
		next = now + ANSWER_INTERVAL_NS;
		bpf_map_update_elem(&answer_pace, &ifindex, &next, BPF_ANY);
		return 1;
	}
	next = *due > now ? *due : now;
	if (next - now > (MEMBER_WORK_BURST - 1) * ANSWER_INTERVAL_NS) {
		limited = bpf_map_lookup_elem(&answers_limited, &zero);
		if (limited)
			*limited += 1;
		return 0;
	}
	*due = next + ANSWER_INTERVAL_NS;
	return 1;
}

static __always_inline int liveness_fresh(__u64 now)
{
	__u32 zero = 0;
	__u64 *until = bpf_map_lookup_elem(&liveness, &zero);

	return until && now < *until;
}

/* Answer a multicast NS the way EarlyAnswers.answer does (portier/answers.py), for
 * the one shape that answer is sent for here: an 86-byte frame, hop limit 255, code 0,
 * to ff02::1:ffXX:XXXX, from a unicast source (never ::, so DAD is never answered),
 * with exactly one option, an 8-byte SLLA, and a valid checksum; a target with a
 * fresh route behind another member.  Any other NS is left to the workers.
 *
 * Nor is a target whose owner is being checked (ROUTE_CHECKING): until the check
 * settles nobody knows which member it lives behind, and answers.py is silent too.
 *
 * The NS must still go up, so the frame becomes the NA only for as long as it takes
 * to clone it out, and is then written back. */
static __always_inline void answer_ns(struct __sk_buff *skb, const struct member *m,
				      __u32 ifindex)
{
	__u8 ns[NS_FRAME_LEN + 2] __attribute__((aligned(8)));
	__u8 na[NS_FRAME_LEN + 2] __attribute__((aligned(8)));
	const __u8 *asker_mac;
	struct route_key key = {};
	struct route *r;
	__u64 now, *count;
	__u32 zero = 0;
	__u16 sum;

	if (skb->len != NS_FRAME_LEN)
		return;
	if (bpf_skb_load_bytes(skb, 0, ns, NS_FRAME_LEN))
		return;
	/* The IPv6 header: version 6, payload 32, ND's hop limit. */
	if ((ns[14] >> 4) != 6 || ns[18] != 0 || ns[19] != NS_ICMP_LEN ||
	    ns[21] != ND_HOP_LIMIT)
		return;
	/* Destination ff02::1:ffXX:XXXX (a solicited-node group). */
	if (ns[38] != 0xff || ns[39] != 0x02 || ns[49] != 0x01 || ns[50] != 0xff)
		return;
	for (int i = 40; i < 49; i++)
		if (ns[i])
			return;
	/* Source: not :: (a DAD probe: the owner defends itself), not multicast. */
	if (ns[22] == 0xff || is_unspecified(&ns[22]))
		return;
	/* Ethernet: to a group MAC or to this member; never a frame of ours. */
	if (!(ns[0] & 1) && !mac_eq(ns, m->mac))
		return;
	if (mac_eq(&ns[6], m->mac))
		return;
	/* ICMPv6: code 0, a unicast target, one option: SLLA of 8 bytes. */
	if (ns[55] != 0 || ns[62] == 0xff || ns[78] != OPT_SLLA || ns[79] != 1)
		return;
	if (icmp6_sum(ns) != 0xffff)
		return;  /* validate_nd drops it, and so answers.py never answers it */

	now = bpf_ktime_get_ns();
	if (!liveness_fresh(now))
		return;
	key.group = m->group;
	__builtin_memcpy(key.addr, &ns[62], 16);
	r = bpf_map_lookup_elem(&routes, &key);
	if (!r || r->ifindex == ifindex || now >= r->fresh_until_ns ||
	    (r->flags & ROUTE_CHECKING))
		return;
	if (mac_eq(&ns[6], r->smac))
		return;  /* the egress member's own MAC: our echo */
	if (!answer_paced(ifindex, now))
		return;

	/* The asker's MAC: its SLLA when unicast, else the Ethernet source. */
	asker_mac = (ns[80] & 1) ? &ns[6] : &ns[80];
	__builtin_memcpy(na, ns, NS_FRAME_LEN);
	__builtin_memcpy(&na[0], asker_mac, 6);
	__builtin_memcpy(&na[6], m->mac, 6);
	/* IPv6: traffic class and flow label 0, from the target to the asker. */
	na[14] = 0x60;
	na[15] = na[16] = na[17] = 0;
	__builtin_memcpy(&na[38], &ns[22], 16);
	__builtin_memcpy(&na[22], &ns[62], 16);
	/* NA: solicited, override clear, R as the neighbor is; TLLA = this member. */
	na[54] = NA_TYPE;
	na[55] = 0;
	na[56] = na[57] = 0;
	na[58] = NA_FLAG_SOLICITED | ((r->flags & ROUTE_ROUTER) ? NA_FLAG_ROUTER : 0);
	na[59] = na[60] = na[61] = 0;
	na[78] = OPT_TLLA;
	na[79] = 1;
	__builtin_memcpy(&na[80], m->mac, 6);
	sum = ~icmp6_sum(na);
	__builtin_memcpy(&na[56], &sum, 2);

	/* The MACs are outside what a CHECKSUM_COMPLETE skb->csum covers at ingress;
	 * the IPv6 part is inside: keep that sum true for the clone and, once the NS
	 * is back, for the NS. */
	if (bpf_skb_store_bytes(skb, 0, na, ETH_HLEN, 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &na[ETH_HLEN], NS_FRAME_LEN - ETH_HLEN,
				BPF_F_RECOMPUTE_CSUM))
		goto restore;
	if (bpf_clone_redirect(skb, ifindex, 0) == 0) {
		count = bpf_map_lookup_elem(&answered, &zero);
		if (count)
			*count += 1;
	}
restore:
	bpf_skb_store_bytes(skb, 0, ns, ETH_HLEN, 0);
	bpf_skb_store_bytes(skb, ETH_HLEN, &ns[ETH_HLEN], NS_FRAME_LEN - ETH_HLEN,
			    BPF_F_RECOMPUTE_CSUM);
}

/* Where the upper layer starts and what it is, walking extension headers as
 * locate_upper_layer (portier/frame.py) does.  Returns the protocol (59, none, behind
 * a later fragment) or -1 for anything the workers must judge. */
static __always_inline int upper_layer(struct __sk_buff *skb, __u8 nh, __u32 end,
				       __u32 *offset)
{
	__u32 off = L4_OFF;
	__u8 hdr[4];

#pragma unroll
	for (int i = 0; i < MAX_EXT_HEADERS; i++) {
		if (!is_ext_header(nh))
			break;
		if (off + 8 > end || bpf_skb_load_bytes(skb, off, hdr, 4))
			return -1;
		if (nh == 44) {
			if (((hdr[2] << 8 | hdr[3]) & 0xfff8) != 0) {
				*offset = off + 8;
				return 59;  /* a later fragment: no upper header here */
			}
			off += 8;
		} else if (nh == 51) {
			off += ((__u32)hdr[1] + 2) * 4;
		} else {
			off += ((__u32)hdr[1] + 1) * 8;
		}
		nh = hdr[0];
		if (off > end)
			return -1;
	}
	if (is_ext_header(nh))
		return -1;  /* too many extension headers */
	*offset = off;
	return nh;
}

/* The IPv6 length of each segment the egress will send: the whole packet, or for a
 * GSO/GRO super-packet its headers plus gso_size (workers/packetio.py's rule). */
static __always_inline __u32 segment_bytes(struct __sk_buff *skb, int proto, __u32 l4)
{
	__u8 doff;

	if (!skb->gso_size)
		return skb->len - ETH_HLEN;
	if (proto == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, l4 + 12, &doff, 1))
			return 0xffffffff;
		return l4 - ETH_HLEN + (doff >> 4) * 4 + skb->gso_size;
	}
	return l4 - ETH_HLEN + 8 + skb->gso_size;
}

SEC("tc")
int portier_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 ifindex = skb->ingress_ifindex;
	struct ethhdr *eth = data;
	struct prefix_key prefix = {};
	struct route_key key = {};
	struct ipv6hdr *ip6;
	struct member *m;
	struct owner *o;
	struct route *r;
	__u32 l4 = 0, zero = 0;
	__u64 *count;
	int proto;
	__u8 type;

	/* A tagged frame belongs to a VLAN sub-interface, never to this member: counted
	 * (the workers' socket filter drops it without a trace) and left alone.  The tag
	 * is in the metadata when the device took it off, else still in the frame. */
	if (skb->vlan_present || skb->protocol == bpf_htons(ETH_P_8021Q) ||
	    skb->protocol == bpf_htons(ETH_P_8021AD)) {
		count = bpf_map_lookup_elem(&tagged, &zero);
		if (count)
			*count += 1;
		return TC_ACT_OK;
	}
	if (data + L4_OFF > end) {
		if (skb->len < L4_OFF || bpf_skb_pull_data(skb, L4_OFF))
			return TC_ACT_OK;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		eth = data;
		if (data + L4_OFF > end)
			return TC_ACT_OK;
	}
	ip6 = data + ETH_HLEN;
	if (eth->h_proto != bpf_htons(ETH_P_IPV6) || ip6->version != 6)
		return TC_ACT_OK;
	m = bpf_map_lookup_elem(&members, &ifindex);
	if (!m || !(m->flags & MEMBER_ENABLED))
		return TC_ACT_OK;

	if (ip6->nexthdr == NH_ICMPV6) {
		if (skb->len > L4_OFF && !bpf_skb_load_bytes(skb, L4_OFF, &type, 1) &&
		    type >= ND_FIRST && type <= ND_LAST) {
			if (type == NS_TYPE)
				answer_ns(skb, m, ifindex);
			return TC_ACT_OK;  /* ND is the workers' (the NS too) */
		}
	}

	/* Multicast, and anything not for this member's MAC (the engine drops that). */
	if ((eth->h_dest[0] & 1) || ip6->daddr.in6_u.u6_addr8[0] == 0xff)
		return TC_ACT_OK;
	if (!mac_eq(eth->h_dest, m->mac) || mac_eq(eth->h_source, m->mac))
		return TC_ACT_OK;
	/* A multicast source, or :: as the destination: the engine drops them. */
	if (ip6->saddr.in6_u.u6_addr8[0] == 0xff || is_unspecified(ip6->daddr.in6_u.u6_addr8))
		return TC_ACT_OK;
	/* The payload must end where the frame does: padding, truncation and jumbograms
	 * (payload length 0) are the workers'. */
	if (L4_OFF + bpf_ntohs(ip6->payload_len) != skb->len)
		return TC_ACT_OK;

	/* Source validation: an address owned behind another member, or by another MAC
	 * behind this one, goes up; the workers drop, count and report the claim. */
	key.group = m->group;
	__builtin_memcpy(key.addr, &ip6->saddr, 16);
	o = bpf_map_lookup_elem(&owners, &key);
	if (o && (o->ifindex != ifindex || !mac_eq(o->mac, eth->h_source)))
		return TC_ACT_OK;
	__builtin_memcpy(key.addr, &ip6->daddr, 16);
	proto = ip6->nexthdr;

	l4 = L4_OFF;
	if (is_ext_header(proto)) {
		proto = upper_layer(skb, proto, skb->len, &l4);
		if (proto < 0)
			return TC_ACT_OK;
		/* ND behind extension headers is ND all the same. */
		if (proto == NH_ICMPV6) {
			if (l4 >= skb->len || bpf_skb_load_bytes(skb, l4, &type, 1) ||
			    (type >= ND_FIRST && type <= ND_LAST))
				return TC_ACT_OK;
		}
	}

	r = bpf_map_lookup_elem(&routes, &key);
	if (!r) {
		/* Off-link (not fe80::/10, in no on-link prefix): the group's router. */
		if (!(m->flags & MEMBER_HAS_ROUTER))
			return TC_ACT_OK;
		if (key.addr[0] == 0xfe && (key.addr[1] & 0xc0) == 0x80)
			return TC_ACT_OK;
		prefix.prefixlen = 32 + 128;
		prefix.group = m->group;
		__builtin_memcpy(prefix.addr, key.addr, 16);
		if (bpf_map_lookup_elem(&onlink, &prefix))
			return TC_ACT_OK;  /* on-link and unknown: held and solicited */
		__builtin_memcpy(key.addr, m->router, 16);
		r = bpf_map_lookup_elem(&routes, &key);
		if (!r)
			return TC_ACT_OK;
	}
	if (r->ifindex == ifindex)
		return TC_ACT_OK;  /* hairpin: never back out of the ingress */
	if (segment_bytes(skb, proto, l4) > r->mtu)
		return TC_ACT_OK;  /* the workers send Packet Too Big */

	if (mac_eq(eth->h_source, r->smac))
		return TC_ACT_OK;  /* the egress's own MAC: our echo */
	__builtin_memcpy(eth->h_dest, r->dmac, 6);
	__builtin_memcpy(eth->h_source, r->smac, 6);
	count = bpf_map_lookup_elem(&forwarded, &zero);
	if (count)
		*count += 1;  /* per CPU: no atomic needed */
	if (r->flags & ROUTE_PEER)
		return bpf_redirect_peer(r->ifindex, 0);
	return bpf_redirect(r->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
