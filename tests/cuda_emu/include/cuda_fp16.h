// xemu stand-in for <cuda_fp16.h>: see xemu.h
#pragma once
#include "xemu.h"
