// placeholder: filled by the AMQP work
