/* Host test of the C firmware bridge against the shared vectors (a text rendering of vectors/frames.json). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ami_bridge.h"

static int passed, failed;

static void check(int ok, const char *name, const char *what) {
    if (ok) { passed++; return; }
    failed++;
    printf("FAIL %s: %s\n", name, what);
}

static size_t unhex(const char *s, uint8_t *out) {
    size_t n = 0;
    unsigned v;
    if (strcmp(s, "-") == 0) return 0;
    while (s[0] && s[1] && sscanf(s, "%2x", &v) == 1) { out[n++] = (uint8_t)v; s += 2; }
    return n;
}

/* Re-pack the typed message: unpack then pack must give the payload back, byte for byte. */
static size_t repack(uint8_t type, const uint8_t *p, size_t n, uint8_t *out, size_t cap) {
    switch (type) {
    case AMI_HELLO: { ami_hello_t m; ami_hello_unpack(p, n, &m); return ami_hello_pack(&m, out, cap); }
    case AMI_HEARTBEAT: { ami_heartbeat_t m; ami_heartbeat_unpack(p, n, &m); return ami_heartbeat_pack(&m, out, cap); }
    case AMI_ACK: { ami_ack_t m; ami_ack_unpack(p, n, &m); return ami_ack_pack(&m, out, cap); }
    case AMI_TIME_SYNC: { ami_time_sync_t m; ami_time_sync_unpack(p, n, &m); return ami_time_sync_pack(&m, out, cap); }
    case AMI_SURPRISE: { ami_surprise_t m; ami_surprise_unpack(p, n, &m); return ami_surprise_pack(&m, out, cap); }
    case AMI_CONFIG: { ami_config_t m; ami_config_unpack(p, n, &m); return ami_config_pack(&m, out, cap); }
    case AMI_IMU: { ami_imu_t m; ami_imu_unpack(p, n, &m); return ami_imu_pack(&m, out, cap); }
    case AMI_COMMAND: { ami_command_t m; ami_command_unpack(p, n, &m); return ami_command_pack(&m, out, cap); }
    case AMI_ACTION: case AMI_PROPRIO: {
        ami_vector_t m; ami_vector_unpack(p, n, &m); return ami_vector_pack(&m, out, cap); }
    case AMI_LATENT: case AMI_PREDICTION: {
        ami_tensor_t m; ami_tensor_unpack(p, n, &m); return ami_tensor_pack(&m, out, cap); }
    case AMI_LOG: { ami_log_t m; ami_log_unpack(p, n, &m); return ami_log_pack(&m, out, cap); }
    default: memcpy(out, p, n); return n;
    }
}

int main(int argc, char **argv) {
    static char line[8192], name[128], payload_hex[4096], body_hex[4096], wire_hex[8192];
    static uint8_t payload[2048], body[2048], wire[4096], enc[4096], rx[AMI_MAX_WIRE(AMI_DEFAULT_MAX_PAYLOAD)], buf[2048];
    FILE *f;
    if (argc != 2 || !(f = fopen(argv[1], "r"))) { printf("usage: test_vectors VECTORS.txt\n"); return 2; }
    while (fgets(line, sizeof line, f)) {
        unsigned type, seq, flags;
        unsigned long t_us;
        if (strncmp(line, "crc ", 4) == 0) {
            unsigned expect;
            size_t n = 0;
            if (sscanf(line, "crc %4095s %x", payload_hex, &expect) == 2) n = unhex(payload_hex, payload);
            check(n == 9 && ami_crc16(payload, n) == expect, "crc", "check value");
            continue;
        }
        if (sscanf(line, "%127s %u %u %u %lu %4095s %4095s %8191s", name, &type, &seq, &flags, &t_us, payload_hex,
                   body_hex, wire_hex) != 8) continue;
        {
            size_t plen = unhex(payload_hex, payload), wlen = unhex(wire_hex, wire), elen, i, got = 0, rlen;
            ami_frame_t fr, out;
            ami_decoder_t d;
            (void)unhex(body_hex, body);
            fr.version = 1; fr.flags = (uint8_t)flags; fr.seq = (uint8_t)seq; fr.type = (uint8_t)type;
            fr.len = (uint16_t)plen; fr.t_us = (uint32_t)t_us; fr.payload = payload;
            elen = ami_frame_encode(&fr, enc, sizeof enc);
            check(elen == wlen && memcmp(enc, wire, wlen) == 0, name, "encode reproduces the wire bytes");
            check(ami_frame_encode(&fr, enc, wlen - 1) == 0, name, "encode refuses a short buffer");
            ami_decoder_init(&d, rx, sizeof rx, AMI_DEFAULT_MAX_PAYLOAD);
            for (i = 0; i < wlen; i++) got += (size_t)ami_decoder_push(&d, wire[i], &out);
            check(got == 1 && out.type == type && out.seq == seq && out.flags == flags && out.t_us == t_us &&
                  out.len == plen && memcmp(out.payload, payload, plen) == 0, name, "decode gives the frame back");
            rlen = repack((uint8_t)type, payload, plen, buf, sizeof buf);
            check(rlen == plen && memcmp(buf, payload, plen) == 0, name, "typed unpack + pack is the identity");
            /* every single-bit flip between the delimiters is rejected */
            for (i = 1; i + 1 < wlen; i++) {
                int bit;
                for (bit = 0; bit < 8; bit++) {
                    size_t k, accepted = 0;
                    ami_decoder_init(&d, rx, sizeof rx, AMI_DEFAULT_MAX_PAYLOAD);
                    for (k = 0; k < wlen; k++) {
                        uint8_t b = k == i ? (uint8_t)(wire[k] ^ (1u << bit)) : wire[k];
                        accepted += (size_t)ami_decoder_push(&d, b, &out);
                    }
                    if (accepted) { check(0, name, "a flipped bit was accepted"); goto next; }
                }
            }
            check(1, name, "all bit flips rejected");
        next:;
        }
    }
    fclose(f);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
