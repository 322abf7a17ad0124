// xemu stand-in for <cuda.h>: see xemu.h
#pragma once
#include "xemu.h"
