/*
 * A fault-injecting PKCS#11 module for the tests of isolation: process.
 * It forwards every call to the module named by FAULTMOD_TARGET (SoftHSM2)
 * and, on command, makes one C_Sign hang forever or crash the process:
 * C_Sign removes $FAULTMOD_DIR/hang or $FAULTMOD_DIR/crash if it exists
 * and then blocks forever, or raises SIGSEGV. One command, one fault.
 *
 * Built by the test: gcc -shared -fPIC -I<miekg/pkcs11> faultmod.c -ldl
 */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CK_PTR *
#define NULL_PTR 0
#define CK_DEFINE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType (* name)
#define CK_CALLBACK_FUNCTION(returnType, name) returnType (* name)
#include "pkcs11.h"

static CK_FUNCTION_LIST list;
static CK_FUNCTION_LIST_PTR target;
static char hangPath[4096], crashPath[4096];

static CK_RV faultSign(CK_SESSION_HANDLE s, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG_PTR sigLen) {
	if (unlink(hangPath) == 0) {
		for (;;)
			pause();
	}
	if (unlink(crashPath) == 0) {
		raise(SIGSEGV);
	}
	return target->C_Sign(s, data, len, sig, sigLen);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
	if (target == NULL) {
		const char *path = getenv("FAULTMOD_TARGET"), *dir = getenv("FAULTMOD_DIR");
		if (path == NULL || dir == NULL)
			return CKR_GENERAL_ERROR;
		void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
		if (h == NULL)
			return CKR_GENERAL_ERROR;
		CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR) = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(h, "C_GetFunctionList");
		if (get == NULL || get(&target) != CKR_OK)
			return CKR_GENERAL_ERROR;
		snprintf(hangPath, sizeof hangPath, "%s/hang", dir);
		snprintf(crashPath, sizeof crashPath, "%s/crash", dir);
		list = *target;
		list.C_Sign = faultSign;
	}
	*out = &list;
	return CKR_OK;
}
