/*
 * The other include order of tests/c/test_dlpack.c: dlpack.h first, then our header (which
 * only forward-declares struct DLManagedTensorVersioned and struct DLManagedTensor).
 */
#include <dlpack/dlpack.h>

#include "etha_tensor_bus.h"

/* A call with dlpack.h's complete types through our header's declarations: a NULL client. */
int dlpack_other_order(void) {
    DLManagedTensorVersioned v;
    DLManagedTensor l;
    EtbPayload *p = NULL;
    int ok = 1;
    {
        unsigned char *b = (unsigned char *)&v;
        unsigned long i;
        for (i = 0; i < sizeof v; i++) b[i] = 0;
        b = (unsigned char *)&l;
        for (i = 0; i < sizeof l; i++) b[i] = 0;
    }
    v.version.major = DLPACK_MAJOR_VERSION;
    ok &= etb_client_dlpack_payload(NULL, &v, 0, NULL, &p) == ETB_ERR_NULL_ARGUMENT;
    ok &= etb_client_dlpack_legacy_payload(NULL, &l, 0, NULL, &p) == ETB_ERR_NULL_ARGUMENT;
    ok &= p == NULL;
    return ok;
}
