/* rkllm-cffi shim: conversions for ABI family 1.2.0 (see family_impl.h). */
#define FAM_ID 120
#define FAM_NAME "1.2.0"
#define FAM_TABLE rkshim_family_1_2_0
#include "1.2.0/rkllm.h"
#include "family_impl.h"
