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

#endif
