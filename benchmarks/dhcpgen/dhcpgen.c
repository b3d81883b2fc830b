/*
 * dhcpgen: a VIF-sourced DHCPv4 load generator (DORA at a fixed offered rate).
 *
 *   dhcpgen --iface IF[,IF...] --rate R --duration S [--clients N] [--mac BASE]
 *           [--drain MS] [--pcap FILE] [--seed N]
 *
 * Exchange k is made by client k % N: MAC BASE+client, sent on interface client % nif (round
 * robin), xid = seed + k. It broadcasts a DISCOVER (udp 68->67, as a guest's dhclient does;
 * not relayed), answers the OFFER with a REQUEST (SELECTING: options 50 and 54, RFC 2131
 * §4.3.2) and waits for the ACK. DISCOVERs leave at R/s, paced on CLOCK_MONOTONIC; when the
 * generator falls more than 50 ms behind it skips the exchanges it could not send (counted in
 * "skipped") instead of bursting, so "gen_limited" says the offered rate was its own ceiling.
 *
 * One JSON object on stdout: counts, losses (DISCOVER->OFFER, REQUEST->ACK), latencies (us).
 * AF_PACKET sockets (one per interface, sendmmsg/recvmmsg, PACKET_IGNORE_OUTGOING); needs
 * CAP_NET_RAW. --pcap writes the first 4096 frames sent and received (tests decode it).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_IF 64
#define BATCH 64
#define FRAME_LEN 342 /* 14 eth + 20 ip + 8 udp + 300 bootp (RFC 951 minimum) */
#define RX_LEN 2048
#define PCAP_MAX 4096
#define TICK_NS 200000 /* 200 us: pacing granularity */

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

enum { NEW = 0, DISCOVERED, OFFERED, REQUESTED, ACKED, NAKED };

struct exch {
    uint64_t t_disc, t_offer, t_req, t_ack;
    uint32_t yiaddr, server_id;
    uint8_t state;
};

struct port {
    int fd, ifindex;
    char name[IF_NAMESIZE];
    /* pending tx batch */
    unsigned n;
    unsigned char frames[BATCH][FRAME_LEN];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    struct sockaddr_ll addr;
};

static struct port ports[MAX_IF];
static int nports;
static struct exch *ex;
static uint64_t total, nclients = 1, base_mac = 0x020000000000ULL;
static uint32_t seed;
static uint64_t send_errors, rx_frames, unmatched, dup_replies, naks, offers, acks, requests;
static FILE *pcap;
static unsigned pcap_count;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static void pcap_write(const unsigned char *f, unsigned len) {
    if (!pcap || pcap_count >= PCAP_MAX) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint32_t h[4] = {(uint32_t)ts.tv_sec, (uint32_t)(ts.tv_nsec / 1000), len, len};
    fwrite(h, sizeof h, 1, pcap);
    fwrite(f, len, 1, pcap);
    pcap_count++;
}

static uint16_t ip_checksum(const unsigned char *p, int len) {
    uint32_t s = 0;
    for (int i = 0; i < len; i += 2) s += (p[i] << 8) | p[i + 1];
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

static void client_mac(uint64_t client, unsigned char mac[6]) {
    uint64_t v = base_mac + client;
    for (int i = 0; i < 6; i++) mac[i] = (unsigned char)(v >> (40 - 8 * i));
}

/* A broadcast BOOTREQUEST from client `client` (DISCOVER, or REQUEST with yiaddr/server_id).
 * Pure: fills f[FRAME_LEN]. */
static void build_request(unsigned char *f, uint64_t client, uint32_t xid, int msg_type,
                          uint32_t yiaddr, uint32_t server_id) {
    unsigned char mac[6];
    client_mac(client, mac);
    memset(f, 0, FRAME_LEN);
    memset(f, 0xff, 6);
    memcpy(f + 6, mac, 6);
    f[12] = 0x08; f[13] = 0x00;
    unsigned char *ip = f + 14, *udp = ip + 20, *b = udp + 8;
    ip[0] = 0x45;
    ip[2] = (FRAME_LEN - 14) >> 8; ip[3] = (FRAME_LEN - 14) & 0xff;
    ip[8] = 64; ip[9] = 17;
    memset(ip + 16, 0xff, 4); /* 0.0.0.0 -> 255.255.255.255 */
    uint16_t c = ip_checksum(ip, 20);
    ip[10] = c >> 8; ip[11] = c & 0xff;
    udp[0] = 0; udp[1] = 68; udp[2] = 0; udp[3] = 67;
    udp[4] = (FRAME_LEN - 34) >> 8; udp[5] = (FRAME_LEN - 34) & 0xff; /* checksum 0: none */
    b[0] = 1; b[1] = 1; b[2] = 6;
    b[4] = xid >> 24; b[5] = xid >> 16; b[6] = xid >> 8; b[7] = xid;
    memcpy(b + 28, mac, 6);
    unsigned char *o = b + 236;
    o[0] = 99; o[1] = 130; o[2] = 83; o[3] = 99; /* magic cookie */
    o += 4;
    *o++ = 53; *o++ = 1; *o++ = (unsigned char)msg_type;
    *o++ = 61; *o++ = 7; *o++ = 1; memcpy(o, mac, 6); o += 6;
    if (msg_type == 3) {
        *o++ = 50; *o++ = 4; memcpy(o, &yiaddr, 4); o += 4;
        *o++ = 54; *o++ = 4; memcpy(o, &server_id, 4); o += 4;
    }
    *o++ = 55; *o++ = 4; *o++ = 1; *o++ = 3; *o++ = 6; *o++ = 51;
    *o++ = 255;
}

static void flush(struct port *p) {
    unsigned off = 0;
    while (off < p->n) {
        int r = sendmmsg(p->fd, p->msgs + off, p->n - off, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            send_errors += p->n - off;
            break;
        }
        off += (unsigned)r;
    }
    p->n = 0;
}

static unsigned char *slot(struct port *p) {
    if (p->n == BATCH) flush(p);
    return p->frames[p->n++];
}

static void queue_request(uint64_t k, int msg_type) {
    uint64_t client = k % nclients;
    struct port *p = &ports[client % nports];
    unsigned char *f = slot(p);
    build_request(f, client, seed + (uint32_t)k, msg_type, ex[k].yiaddr, ex[k].server_id);
    pcap_write(f, FRAME_LEN);
}

/* Decode a reply frame: 1 and fills out the fields when it is a BOOTREPLY to port 68 with a
 * message type; 0 otherwise. Pure. */
static int parse_reply(const unsigned char *f, unsigned len, uint32_t *xid, int *msg_type,
                       uint32_t *yiaddr, uint32_t *server_id) {
    if (len < 14 + 20 + 8 + 240 || f[12] != 0x08 || f[13] != 0x00) return 0;
    const unsigned char *ip = f + 14;
    unsigned ihl = (ip[0] & 0x0f) * 4;
    if ((ip[0] >> 4) != 4 || ihl < 20 || ip[9] != 17) return 0;
    const unsigned char *udp = ip + ihl, *b = udp + 8, *end = f + len;
    if (b + 240 > end || udp[2] != 0 || udp[3] != 68 || b[0] != 2) return 0;
    if (b[236] != 99 || b[237] != 130 || b[238] != 83 || b[239] != 99) return 0;
    *xid = ((uint32_t)b[4] << 24) | ((uint32_t)b[5] << 16) | ((uint32_t)b[6] << 8) | b[7];
    memcpy(yiaddr, b + 16, 4);
    memcpy(server_id, ip + 12, 4); /* fallback: the IP source */
    *msg_type = 0;
    for (const unsigned char *o = b + 240; o < end && *o != 255;) {
        if (*o == 0) { o++; continue; }
        if (o + 2 > end || o + 2 + o[1] > end) break;
        if (o[0] == 53 && o[1] == 1) *msg_type = o[2];
        if (o[0] == 54 && o[1] == 4) memcpy(server_id, o + 2, 4);
        o += 2 + o[1];
    }
    return *msg_type != 0;
}

static void on_frame(const unsigned char *f, unsigned len, uint64_t t) {
    uint32_t xid, yiaddr, sid;
    int mt;
    rx_frames++;
    if (!parse_reply(f, len, &xid, &mt, &yiaddr, &sid)) return;
    uint64_t k = (uint32_t)(xid - seed);
    if (k >= total || ex[k].state == NEW) { unmatched++; return; }
    pcap_write(f, len);
    struct exch *e = &ex[k];
    if (mt == 2) {
        if (e->state != DISCOVERED) { dup_replies++; return; }
        e->t_offer = t; e->yiaddr = yiaddr; e->server_id = sid; e->state = OFFERED; offers++;
        queue_request(k, 3);
        e->t_req = now_ns(); e->state = REQUESTED; requests++;
    } else if (mt == 5 || mt == 6) {
        if (e->state != REQUESTED) { dup_replies++; return; }
        e->t_ack = t;
        if (mt == 5) { e->state = ACKED; acks++; } else { e->state = NAKED; naks++; }
    }
}

static int open_port(struct port *p, const char *name) {
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ifindex = (int)if_nametoindex(name);
    if (!p->ifindex) { fprintf(stderr, "dhcpgen: no interface %s\n", name); return -1; }
    p->fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, 0);
    if (p->fd < 0) { perror("dhcpgen: socket(AF_PACKET)"); return -1; }
    /* kernel filter: IPv4/UDP to port 68 only (BPF as tcpdump -dd 'udp dst port 68') */
    struct sock_filter code[] = {
        {0x28, 0, 0, 12}, {0x15, 0, 8, 0x0800}, {0x30, 0, 0, 23}, {0x15, 0, 6, 17},
        {0x28, 0, 0, 20}, {0x45, 4, 0, 0x1fff}, {0xb1, 0, 0, 14}, {0x48, 0, 0, 16},
        {0x15, 0, 1, 68}, {0x06, 0, 0, 0x40000}, {0x06, 0, 0, 0},
    };
    struct sock_fprog prog = {sizeof code / sizeof code[0], code};
    int one = 1, buf = 16 << 20;
    if (setsockopt(p->fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0) perror("dhcpgen: filter");
    setsockopt(p->fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
    if (setsockopt(p->fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf) < 0)
        setsockopt(p->fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    if (setsockopt(p->fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf) < 0)
        setsockopt(p->fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    memset(&p->addr, 0, sizeof p->addr);
    p->addr.sll_family = AF_PACKET;
    p->addr.sll_protocol = htons(ETH_P_ALL);
    p->addr.sll_ifindex = p->ifindex;
    if (bind(p->fd, (struct sockaddr *)&p->addr, sizeof p->addr) < 0) {
        perror("dhcpgen: bind");
        return -1;
    }
    p->addr.sll_halen = 6;
    memset(p->addr.sll_addr, 0xff, 6);
    for (int i = 0; i < BATCH; i++) {
        p->iov[i].iov_base = p->frames[i];
        p->iov[i].iov_len = FRAME_LEN;
        memset(&p->msgs[i], 0, sizeof p->msgs[i]);
        p->msgs[i].msg_hdr.msg_iov = &p->iov[i];
        p->msgs[i].msg_hdr.msg_iovlen = 1;
        p->msgs[i].msg_hdr.msg_name = &p->addr;
        p->msgs[i].msg_hdr.msg_namelen = sizeof p->addr;
    }
    return 0;
}

static unsigned char rxbuf[BATCH][RX_LEN];

static void receive(struct port *p) {
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = rxbuf[i];
            iov[i].iov_len = RX_LEN;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int r = recvmmsg(p->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (r <= 0) return;
        uint64_t t = now_ns();
        for (int i = 0; i < r; i++) on_frame(rxbuf[i], msgs[i].msg_len, t);
        if (r < BATCH) return;
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void print_latency(const char *name, uint64_t *v, uint64_t n, int last) {
    if (!n) { printf("\"%s\": null%s", name, last ? "" : ", "); return; }
    qsort(v, n, sizeof *v, cmp_u64);
    printf("\"%s\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"max\": %.1f}%s", name,
           v[n / 2] / 1e3, v[n * 9 / 10] / 1e3, v[n * 99 / 100] / 1e3, v[n - 1] / 1e3, last ? "" : ", ");
}

static void usage(void) {
    fprintf(stderr, "usage: dhcpgen --iface IF[,IF...] --rate R --duration S [--clients N] "
                    "[--mac 02:00:00:00:00:00] [--drain MS] [--pcap FILE] [--seed N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *ifaces = NULL, *pcap_path = NULL;
    double rate = 0, duration = 0, drain_ms = 500;
    seed = (uint32_t)(now_ns() ^ (uint64_t)getpid() << 16);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (!strcmp(a, "--iface")) ifaces = v;
        else if (!strcmp(a, "--rate")) rate = atof(v);
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--clients")) nclients = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--drain")) drain_ms = atof(v);
        else if (!strcmp(a, "--pcap")) pcap_path = v;
        else if (!strcmp(a, "--seed")) seed = (uint32_t)strtoul(v, NULL, 0);
        else if (!strcmp(a, "--mac")) {
            unsigned m[6];
            if (sscanf(v, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) usage();
            base_mac = 0;
            for (int j = 0; j < 6; j++) base_mac = (base_mac << 8) | (m[j] & 0xff);
        } else usage();
        i++;
    }
    if (!ifaces || rate <= 0 || duration <= 0 || nclients == 0 || drain_ms < 0) usage();
    char *list = strdup(ifaces);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        if (nports == MAX_IF) { fprintf(stderr, "dhcpgen: at most %d interfaces\n", MAX_IF); return 2; }
        if (open_port(&ports[nports++], tok) < 0) return 1;
    }
    total = (uint64_t)(rate * duration + 0.5);
    ex = calloc(total ? total : 1, sizeof *ex);
    if (!ex) { perror("dhcpgen: calloc"); return 1; }
    if (pcap_path) {
        pcap = fopen(pcap_path, "wb");
        if (!pcap) { perror(pcap_path); return 1; }
        uint32_t gh[6] = {0xa1b2c3d4, 0x00040002, 0, 0, 65535, 1};
        fwrite(gh, sizeof gh, 1, pcap);
    }
    struct pollfd pfd[MAX_IF];
    for (int i = 0; i < nports; i++) pfd[i] = (struct pollfd){.fd = ports[i].fd, .events = POLLIN};
    uint64_t start = now_ns(), period = (uint64_t)(duration * 1e9), drain = (uint64_t)(drain_ms * 1e6);
    uint64_t next = 0, skipped = 0, lag_limit = (uint64_t)(rate * 0.05) + BATCH, end_sent = 0;
    int sending = 1;
    for (;;) {
        uint64_t t = now_ns() - start;
        if (sending) {
            uint64_t due = t >= period ? total : (uint64_t)((double)t * rate / 1e9) + 1;
            if (due > total) due = total;
            if (due > next + lag_limit) { skipped += due - lag_limit - next; next = due - lag_limit; }
            unsigned burst = 0;
            while (next < due && burst < 4 * BATCH) {
                ex[next].t_disc = now_ns();
                ex[next].state = DISCOVERED;
                queue_request(next, 1);
                next++; burst++;
            }
            if (next >= total) { sending = 0; end_sent = now_ns() - start; }
        }
        for (int i = 0; i < nports; i++) if (ports[i].n) flush(&ports[i]);
        /* sleep until the next DISCOVER is due, at least TICK_NS (sends go out in batches) */
        uint64_t wait = 5000000;
        if (sending) {
            uint64_t t2 = now_ns() - start, due_at = (uint64_t)((double)next * 1e9 / rate);
            wait = due_at > t2 ? due_at - t2 : 0;
            if (wait < TICK_NS) wait = TICK_NS;
            if (wait > 5000000) wait = 5000000;
        }
        struct timespec ts = {(time_t)(wait / 1000000000ULL), (long)(wait % 1000000000ULL)};
        int r = ppoll(pfd, (nfds_t)nports, &ts, NULL);
        if (r > 0)
            for (int i = 0; i < nports; i++) if (pfd[i].revents & POLLIN) receive(&ports[i]);
        for (int i = 0; i < nports; i++) if (ports[i].n) flush(&ports[i]);
        if (!sending) {
            uint64_t done = acks + naks, sent = total - skipped;
            uint64_t waited = now_ns() - start - end_sent;
            if (waited >= drain || (done == sent && waited > 0)) break;
        }
    }
    /* tally */
    uint64_t discovers = total - skipped;
    uint64_t *do_l = malloc(sizeof(uint64_t) * (total + 1)), *ra_l = malloc(sizeof(uint64_t) * (total + 1)),
             *dora_l = malloc(sizeof(uint64_t) * (total + 1));
    uint64_t nd = 0, nr = 0, na = 0;
    for (uint64_t k = 0; k < total; k++) {
        struct exch *e = &ex[k];
        if (e->t_offer) do_l[nd++] = e->t_offer - e->t_disc;
        if (e->state == ACKED) { ra_l[nr++] = e->t_ack - e->t_req; dora_l[na++] = e->t_ack - e->t_disc; }
    }
    double sent_s = (end_sent ? end_sent : period) / 1e9;
    double do_loss = discovers ? 100.0 * (double)(discovers - offers) / (double)discovers : 100.0;
    double ra_loss = requests ? 100.0 * (double)(requests - acks) / (double)requests : 100.0;
    int gen_limited = discovers < (uint64_t)(0.99 * rate * duration) || sent_s > duration * 1.02;
    printf("{\"offered_rate\": %.0f, \"duration_s\": %.3f, \"interfaces\": %d, \"clients\": %llu, "
           "\"discovers\": %llu, \"offers\": %llu, \"requests\": %llu, \"acks\": %llu, \"naks\": %llu, "
           "\"skipped\": %llu, \"send_errors\": %llu, \"rx_frames\": %llu, \"unmatched\": %llu, "
           "\"duplicates\": %llu, \"send_seconds\": %.3f, \"sent_rate\": %.0f, \"gen_limited\": %s, "
           "\"do_loss_pct\": %.3f, \"ra_loss_pct\": %.3f, \"loss_pct\": %.3f, \"dora_per_s\": %.0f, "
           "\"latency_us\": {",
           rate, duration, nports, (unsigned long long)nclients, (unsigned long long)discovers,
           (unsigned long long)offers, (unsigned long long)requests, (unsigned long long)acks,
           (unsigned long long)naks, (unsigned long long)skipped, (unsigned long long)send_errors,
           (unsigned long long)rx_frames, (unsigned long long)unmatched, (unsigned long long)dup_replies,
           sent_s, discovers / sent_s, gen_limited ? "true" : "false", do_loss, ra_loss,
           do_loss > ra_loss ? do_loss : ra_loss, acks / sent_s);
    print_latency("offer", do_l, nd, 0);
    print_latency("ack", ra_l, nr, 0);
    print_latency("dora", dora_l, na, 1);
    printf("}}\n");
    if (pcap) fclose(pcap);
    return 0;
}
