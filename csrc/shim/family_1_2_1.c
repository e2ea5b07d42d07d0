/* rkllm-cffi shim: conversions for ABI family 1.2.1 (see family_impl.h). */
#define FAM_ID 121
#define FAM_NAME "1.2.1"
#define FAM_TABLE rkshim_family_1_2_1
#include "1.2.1/rkllm.h"
#include "family_impl.h"
