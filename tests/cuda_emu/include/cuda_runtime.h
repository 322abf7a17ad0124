// xemu stand-in for <cuda_runtime.h>: see xemu.h
#pragma once
#include "xemu.h"
