/* netprobe: what the network tests run inside a container that busybox cannot do.
 *
 *   netprobe udp-echo PORT            answer every UDP datagram on PORT with "echo:" + it
 *   netprobe forge IFACE MAC COUNT    send COUNT broadcast frames from source MAC (not the
 *                                     interface's: a guest posing as another machine)
 *   netprobe runts IFACE COUNT        send COUNT frames shorter than an Ethernet header,
 *                                     and COUNT longer than the interface's MTU
 *
 * Built static by tests/images/mkprobes; needs CAP_NET_RAW for forge and runts, which
 * Docker gives every container by default. */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int die(const char *what) {
    perror(what);
    return 1;
}

static int udp_echo(int port) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0)
        return die("bind");
    printf("listening on udp %d\n", port);
    fflush(stdout);
    for (;;) {
        char buf[2048], out[2100];
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
        if (n < 0)
            return die("recvfrom");
        memcpy(out, "echo:", 5);
        memcpy(out + 5, buf, n);
        sendto(s, out, n + 5, 0, (struct sockaddr *)&from, len);
    }
}

static int raw_socket(const char *iface, struct sockaddr_ll *to) {
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (s < 0)
        return -1;
    memset(to, 0, sizeof *to);
    to->sll_family = AF_PACKET;
    to->sll_ifindex = if_nametoindex(iface);
    to->sll_halen = 6;
    memset(to->sll_addr, 0xff, 6);
    return s;
}

static int parse_mac(const char *text, unsigned char mac[6]) {
    return sscanf(text, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3],
                  &mac[4], &mac[5]) == 6 ? 0 : -1;
}

static int forge(const char *iface, const char *mac_text, int count) {
    struct sockaddr_ll to;
    unsigned char frame[64] = {0};
    int s = raw_socket(iface, &to);
    if (s < 0)
        return die("socket");
    memset(frame, 0xff, 6);
    if (parse_mac(mac_text, frame + 6) < 0) {
        fprintf(stderr, "bad MAC %s\n", mac_text);
        return 2;
    }
    frame[12] = 0x88; /* a local experimental ethertype */
    frame[13] = 0xb5;
    memcpy(frame + 14, "forged by netprobe", 18);
    int sent = 0;
    for (int i = 0; i < count; i++)
        if (sendto(s, frame, sizeof frame, 0, (struct sockaddr *)&to, sizeof to) == sizeof frame)
            sent++;
    printf("forged %d\n", sent);
    return 0;
}

static int runts(const char *iface, int count) {
    struct sockaddr_ll to;
    static unsigned char big[9000];
    int s = raw_socket(iface, &to);
    if (s < 0)
        return die("socket");
    int sent = 0;
    for (int i = 0; i < count; i++) {
        if (sendto(s, big, 1 + i % 13, 0, (struct sockaddr *)&to, sizeof to) > 0)
            sent++;
        /* The kernel refuses frames over the MTU itself; what it lets through goes. */
        if (sendto(s, big, sizeof big, 0, (struct sockaddr *)&to, sizeof to) > 0)
            sent++;
    }
    printf("runts %d\n", sent);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "udp-echo"))
        return udp_echo(atoi(argv[2]));
    if (argc == 5 && !strcmp(argv[1], "forge"))
        return forge(argv[2], argv[3], atoi(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "runts"))
        return runts(argv[2], atoi(argv[3]));
    fprintf(stderr, "usage: netprobe udp-echo PORT | forge IFACE MAC COUNT | runts IFACE COUNT\n");
    return 2;
}
