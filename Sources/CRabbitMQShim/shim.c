#include "CRabbitMQShim.h"
