#ifndef CRABBITMQSHIM_H
#define CRABBITMQSHIM_H

// Fixed-signature wrappers for the parts of librabbitmq 0.11 that Swift cannot call:
// amqp_login_with_properties is variadic, so Swift marks it unavailable.

#include <amqp.h>

/// SASL PLAIN login with a client-properties table (for connection_name, capabilities).
amqp_rpc_reply_t rw_login_plain(amqp_connection_state_t state, const char *vhost,
                                int channel_max, int frame_max, int heartbeat,
                                const amqp_table_t *client_properties,
                                const char *user, const char *password);

/// SASL EXTERNAL login (identity taken from the TLS client certificate by the broker).
amqp_rpc_reply_t rw_login_external(amqp_connection_state_t state, const char *vhost,
                                   int channel_max, int frame_max, int heartbeat,
                                   const amqp_table_t *client_properties,
                                   const char *identity);

/// One message of a batch for rw_publish_batch.
typedef struct {
    amqp_bytes_t exchange;
    amqp_bytes_t routing_key;
    amqp_basic_properties_t properties;
    amqp_bytes_t body;
} rw_publish_t;

/// Publishes `count` messages on `channel` with one socket write: encodes every frame
/// (basic.publish, content header, body split by the negotiated frame_max) into a buffer
/// and sends it on the connection's descriptor, in slices of about 1 MiB of frames. librabbitmq writes each frame with a send of
/// its own (three or more syscalls per message); a batch of events then costs one.
/// Plain TCP sockets only (the descriptor is written directly); the caller uses
/// amqp_basic_publish for TLS. Blocks until written, as amqp_basic_publish does.
/// Returns AMQP_STATUS_OK or a negative amqp_status_enum.
int rw_publish_batch(amqp_connection_state_t state, amqp_channel_t channel,
                     const rw_publish_t *messages, size_t count);

/// Encodes every message's method and content header (not the bodies, whose pointers may be
/// NULL) and returns the first failure (AMQP_STATUS_BAD_AMQP_DATA, AMQP_STATUS_TABLE_TOO_BIG
/// for a short string over 255 bytes or a header over a frame), or AMQP_STATUS_OK. Sends
/// nothing: a caller that publishes a batch in parts checks it whole first.
int rw_check_batch(amqp_connection_state_t state, const rw_publish_t *messages, size_t count);

#endif
