// orrery/orrery.hpp — everything of the C++ binding: the row format (row.hpp), schema-driven
// values (value.hpp) and the client (client.hpp, which needs orrery_client.h from
// client/ffi/include on the include path and the orrery_client_ffi library at link time).
#pragma once

#include "client.hpp"
#include "row.hpp"
#include "value.hpp"
