/*
 * Example MCU main loop for the ami-edge firmware bridge.
 *
 * Port it by implementing the three HAL functions for your board (UART / USB CDC read and write, a microsecond
 * clock). The loop answers HELLO, sends a HEARTBEAT every 100 ms, and turns each SURPRISE from the host into an
 * ACTION (here: slow down when surprised), the way a controller reacts to the world model.
 *
 * On a host (for tests) it builds against POSIX: bytes come from stdin / go to stdout, or to a serial device or
 * pseudo-terminal given as argv[1]:
 *     cc -std=c99 -I.. ../ami_bridge.c main.c -o mcu && ./mcu /dev/pts/3
 */
#if defined(__unix__) || defined(__APPLE__)
#define _DEFAULT_SOURCE /* cfmakeraw, clock_gettime under -std=c99; must precede every system header */
#define _POSIX_C_SOURCE 200809L
#endif
#include "ami_bridge.h"

/* ------------------------------------------------------------------- HAL: replace on a real board */
#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <poll.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
static int fd_in = 0, fd_out = 1;

static int hal_read_byte(uint8_t *b, int timeout_ms) { /* 1: got a byte, 0: timeout, -1: link gone */
    struct pollfd p;
    ssize_t n;
    p.fd = fd_in; p.events = POLLIN; p.revents = 0;
    if (poll(&p, 1, timeout_ms) <= 0) return 0;
    n = read(fd_in, b, 1);
    return n == 1 ? 1 : -1;
}
static void hal_write(const uint8_t *data, size_t len) {
    while (len) {
        ssize_t n = write(fd_out, data, len);
        if (n <= 0) return;
        data += n; len -= (size_t)n;
    }
}
static uint32_t hal_micros(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
}
static int hal_open(int argc, char **argv) {
    if (argc > 1) {
        struct termios t;
        fd_in = fd_out = open(argv[1], O_RDWR | O_NOCTTY);
        if (fd_in < 0) return -1;
        if (tcgetattr(fd_in, &t) == 0) { cfmakeraw(&t); tcsetattr(fd_in, TCSANOW, &t); }
    }
    return 0;
}
#else
#error "implement hal_read_byte, hal_write, hal_micros and hal_open for this target"
#endif

/* -------------------------------------------------------------------------------------- the loop */
static uint8_t rx_buf[AMI_MAX_WIRE(AMI_DEFAULT_MAX_PAYLOAD)];
static uint8_t tx_buf[AMI_MAX_WIRE(64)];
static uint8_t seq;

static void send(uint8_t type, const uint8_t *payload, size_t len) {
    ami_frame_t f;
    size_t n;
    f.version = AMI_VERSION; f.flags = 0; f.seq = seq++; f.type = type; f.len = (uint16_t)len;
    f.t_us = hal_micros(); f.payload = payload;
    n = ami_frame_encode(&f, tx_buf, sizeof tx_buf);
    if (n) hal_write(tx_buf, n);
}

int main(int argc, char **argv) {
    ami_decoder_t dec;
    ami_frame_t frame;
    uint8_t payload[64];
    uint32_t start = hal_micros(), last_beat = start;
    float speed = 1.0f;
    if (hal_open(argc, argv) != 0) return 1;
    ami_decoder_init(&dec, rx_buf, sizeof rx_buf, AMI_DEFAULT_MAX_PAYLOAD);
    for (;;) {
        uint8_t b;
        int got = hal_read_byte(&b, 10);
        if (got < 0) return 0; /* host closed the link */
        if (got && ami_decoder_push(&dec, b, &frame)) {
            if (frame.type == AMI_HELLO) {
                ami_hello_t h;
                h.version = AMI_VERSION; h.schema_hash = 0; h.max_payload = AMI_DEFAULT_MAX_PAYLOAD;
                h.capabilities = 1u; /* bit 0: sends ACTION */
                send(AMI_HELLO, payload, ami_hello_pack(&h, payload, sizeof payload));
            } else if (frame.type == AMI_SURPRISE) {
                ami_surprise_t s;
                ami_vector_t a;
                ami_surprise_unpack(frame.payload, frame.len, &s);
                speed = s.event ? 0.2f : (speed < 1.0f ? speed + 0.1f : 1.0f); /* brake on surprise */
                a.dim = 2; a.values[0] = speed; a.values[1] = s.value;
                send(AMI_ACTION, payload, ami_vector_pack(&a, payload, sizeof payload));
            }
        }
        if ((uint32_t)(hal_micros() - last_beat) >= 100000u) {
            ami_heartbeat_t hb;
            last_beat = hal_micros();
            hb.uptime_ms = (last_beat - start) / 1000u; hb.state = 1;
            hb.crc_errors = dec.stats.crc_errors; hb.seq_gaps = dec.stats.seq_gaps;
            send(AMI_HEARTBEAT, payload, ami_heartbeat_pack(&hb, payload, sizeof payload));
        }
    }
}
