/* rkllm-cffi shim: conversions for ABI family 1.3.0 (see family_impl.h). */
#define FAM_ID 130
#define FAM_NAME "1.3.0"
#define FAM_TABLE rkshim_family_1_3_0
#include "1.3.0/rkllm.h"
#include "family_impl.h"
