/*
 * ami-edge firmware bridge, protocol version 1: portable C99, no malloc, no stdio.
 *
 * Wire: 00 | COBS(body | crc16_le) | 00, body = version u8, flags u8, seq u8, type u8, len u16, t_us u32, payload.
 * CRC-16/CCITT-FALSE over the body. All multi-byte fields little-endian, packed byte by byte (no struct copies),
 * so the code is independent of the MCU's endianness and alignment. Spec: docs/firmware_bridge.md.
 */
#ifndef AMI_BRIDGE_H
#define AMI_BRIDGE_H

#include <stddef.h>
#include <stdint.h>

#define AMI_VERSION 1u
#define AMI_HEADER_SIZE 10u
#define AMI_CRC_SIZE 2u
#define AMI_DEFAULT_MAX_PAYLOAD 512u
#define AMI_MUST_UNDERSTAND_MASK 0x0Fu
#define AMI_KNOWN_FLAGS 0x00u
/* Largest encoded frame without delimiters for a payload limit: size receive buffers with it. */
#define AMI_MAX_WIRE(max_payload) \
    ((AMI_HEADER_SIZE + (max_payload) + AMI_CRC_SIZE) + (AMI_HEADER_SIZE + (max_payload) + AMI_CRC_SIZE) / 254u + 1u)

enum ami_type {
    AMI_HELLO = 0x01, AMI_HEARTBEAT = 0x02, AMI_ACK = 0x03, AMI_TIME_SYNC = 0x04,
    AMI_LATENT = 0x10, AMI_SURPRISE = 0x11, AMI_PREDICTION = 0x12, AMI_CONFIG = 0x13,
    AMI_ACTION = 0x20, AMI_IMU = 0x21, AMI_PROPRIO = 0x22, AMI_COMMAND = 0x23, AMI_LOG = 0x7E
};
enum ami_dtype { AMI_F32 = 0, AMI_F16 = 1, AMI_I8 = 2 };

typedef struct {
    uint8_t version, flags, seq, type;
    uint16_t len;
    uint32_t t_us;
    const uint8_t *payload; /* decoded: points into the decoder's buffer until the next push */
} ami_frame_t;

uint16_t ami_crc16(const uint8_t *data, size_t len);
uint16_t ami_crc16_update(uint16_t crc, uint8_t byte);

/* COBS. encode: out needs len + len/254 + 1 bytes; returns bytes written. decode: may run in place
 * (out == in); returns the decoded length, or -1 when `in` is not valid COBS. */
size_t ami_cobs_encode(const uint8_t *in, size_t len, uint8_t *out);
long ami_cobs_decode(const uint8_t *in, size_t len, uint8_t *out);

/* Encode one frame, delimiters included, into out[cap]. Returns the wire length, or 0 if cap is too small. */
size_t ami_frame_encode(const ami_frame_t *frame, uint8_t *out, size_t cap);

typedef struct {
    uint32_t frames, crc_errors, malformed, oversize, unknown_flags, seq_gaps;
} ami_stats_t;

typedef struct {
    uint8_t *buf;          /* caller's storage, at least AMI_MAX_WIRE(max_payload) bytes */
    size_t cap, len;
    uint16_t max_payload;
    uint8_t discarding, have_seq, expected_seq;
    ami_stats_t stats;
} ami_decoder_t;

void ami_decoder_init(ami_decoder_t *d, uint8_t *buf, size_t cap, uint16_t max_payload);
/* Feed one received byte. Returns 1 and fills *out when it completes an intact frame, else 0. */
int ami_decoder_push(ami_decoder_t *d, uint8_t byte, ami_frame_t *out);

/* ------------------------------------------------------------------------------------------- messages */
/* pack: write the payload into out[cap], return its length (0 when cap is too small).
 * unpack: read a payload of any length; missing trailing fields read as zero, extra bytes are ignored. */
typedef struct { uint8_t version; uint32_t schema_hash; uint16_t max_payload; uint32_t capabilities; } ami_hello_t;
typedef struct { uint32_t uptime_ms; uint8_t state; uint32_t crc_errors, seq_gaps; } ami_heartbeat_t;
typedef struct { uint8_t acked_seq, acked_type, status; } ami_ack_t;
typedef struct { uint32_t origin_us, receive_us, transmit_us; } ami_time_sync_t;
typedef struct { uint32_t step; float value, threshold; uint8_t event; } ami_surprise_t;
typedef struct { uint16_t key; int32_t value; } ami_config_t;
typedef struct { uint32_t sample_us; float accel[3], gyro[3]; } ami_imu_t;
typedef struct { uint16_t code; int32_t arg; } ami_command_t;
#define AMI_MAX_VECTOR 32u
typedef struct { uint8_t dim; float values[AMI_MAX_VECTOR]; } ami_vector_t; /* ACTION and PROPRIO */
typedef struct {                                                          /* LATENT and PREDICTION */
    uint32_t step; uint8_t dtype; uint16_t dim; float scale;
    const uint8_t *data; /* dim elements of the dtype, little-endian, inside the payload */
} ami_tensor_t;
typedef struct { uint8_t level; const uint8_t *text; size_t text_len; } ami_log_t;

size_t ami_hello_pack(const ami_hello_t *m, uint8_t *out, size_t cap);
void ami_hello_unpack(const uint8_t *p, size_t n, ami_hello_t *m);
size_t ami_heartbeat_pack(const ami_heartbeat_t *m, uint8_t *out, size_t cap);
void ami_heartbeat_unpack(const uint8_t *p, size_t n, ami_heartbeat_t *m);
size_t ami_ack_pack(const ami_ack_t *m, uint8_t *out, size_t cap);
void ami_ack_unpack(const uint8_t *p, size_t n, ami_ack_t *m);
size_t ami_time_sync_pack(const ami_time_sync_t *m, uint8_t *out, size_t cap);
void ami_time_sync_unpack(const uint8_t *p, size_t n, ami_time_sync_t *m);
size_t ami_surprise_pack(const ami_surprise_t *m, uint8_t *out, size_t cap);
void ami_surprise_unpack(const uint8_t *p, size_t n, ami_surprise_t *m);
size_t ami_config_pack(const ami_config_t *m, uint8_t *out, size_t cap);
void ami_config_unpack(const uint8_t *p, size_t n, ami_config_t *m);
size_t ami_imu_pack(const ami_imu_t *m, uint8_t *out, size_t cap);
void ami_imu_unpack(const uint8_t *p, size_t n, ami_imu_t *m);
size_t ami_command_pack(const ami_command_t *m, uint8_t *out, size_t cap);
void ami_command_unpack(const uint8_t *p, size_t n, ami_command_t *m);
size_t ami_vector_pack(const ami_vector_t *m, uint8_t *out, size_t cap);
void ami_vector_unpack(const uint8_t *p, size_t n, ami_vector_t *m);
size_t ami_tensor_pack(const ami_tensor_t *m, uint8_t *out, size_t cap);
void ami_tensor_unpack(const uint8_t *p, size_t n, ami_tensor_t *m);
size_t ami_log_pack(const ami_log_t *m, uint8_t *out, size_t cap);
void ami_log_unpack(const uint8_t *p, size_t n, ami_log_t *m);

/* Element i of a tensor as float (f16 converted, int8 dequantised with scale). */
float ami_tensor_value(const ami_tensor_t *m, uint16_t i);

#endif /* AMI_BRIDGE_H */
