// xemu stand-in for <cuda_runtime_api.h>: see xemu.h
#pragma once
#include "xemu.h"
