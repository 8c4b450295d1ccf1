/*
 * A fake PKCS#11 module for ckraw's loading tests, built by the test with
 * gcc. No real token fails C_GetFunctionList or hands every caller a new
 * instance on purpose, so this one does, chosen at compile time:
 *
 *   -DFAIL_LIST    C_GetFunctionList returns CKR_HOST_MEMORY
 *   -DNULL_LIST    C_GetFunctionList returns CKR_OK and no list
 *   -DNO_SYMBOL    no C_GetFunctionList at all
 *   -DUNDEFINED    references a symbol nothing defines (RTLD_NOW refuses)
 *   -DFAIL_INIT    C_Initialize returns CKR_ARGUMENTS_BAD without pReserved
 *                  (as NSS softoken does)
 *   (none)         a module that works, p11-kit-proxy style: every
 *                  C_GetFunctionList call makes a new instance
 *
 * C_GetInfo reports what happened: libraryDescription is
 * "lists=N inits=M flags=F", manufacturerID the last pReserved string.
 */
#include <stdio.h>
#include <string.h>

#define CK_PTR *
#define NULL_PTR 0
#define CK_DEFINE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType (* name)
#define CK_CALLBACK_FUNCTION(returnType, name) returnType (* name)
#include "pkcs11.h"

static int lists, inits;
static unsigned long init_flags;
static char reserved[33];
static CK_FUNCTION_LIST instances[16];

#ifdef UNDEFINED
extern int hsmkeys_missing_symbol(void);
int hsmkeys_use_missing(void) { return hsmkeys_missing_symbol(); }
#endif

static CK_RV fake_initialize(CK_VOID_PTR p) {
	CK_C_INITIALIZE_ARGS_PTR a = p;
	if (a != NULL) {
		init_flags = a->flags;
		if (a->pReserved != NULL) {
			snprintf(reserved, sizeof reserved, "%s", (const char *)a->pReserved);
		}
	}
#ifdef FAIL_INIT
	if (a == NULL || a->pReserved == NULL) {
		return CKR_ARGUMENTS_BAD;
	}
#endif
	inits++;
	return CKR_OK;
}

static CK_RV fake_finalize(CK_VOID_PTR p) {
	(void)p;
	return CKR_OK;
}

static void pad(CK_UTF8CHAR *dst, size_t n, const char *src) {
	size_t l = strlen(src);
	memset(dst, ' ', n);
	memcpy(dst, src, l < n ? l : n);
}

static CK_RV fake_get_info(CK_INFO_PTR info) {
	char d[64];
	memset(info, 0, sizeof *info);
	info->cryptokiVersion.major = 2;
	info->cryptokiVersion.minor = 40;
	snprintf(d, sizeof d, "lists=%d inits=%d flags=%lu", lists, inits, init_flags);
	pad(info->libraryDescription, sizeof info->libraryDescription, d);
	pad(info->manufacturerID, sizeof info->manufacturerID, reserved);
	return CKR_OK;
}

#ifndef NO_SYMBOL
CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp) {
#if defined(FAIL_LIST)
	(void)pp;
	return CKR_HOST_MEMORY;
#elif defined(NULL_LIST)
	*pp = NULL;
	return CKR_OK;
#else
	CK_FUNCTION_LIST *f = &instances[lists % 16];
	lists++;
	memset(f, 0, sizeof *f);
	f->version.major = 2;
	f->version.minor = 40;
	f->C_Initialize = fake_initialize;
	f->C_Finalize = fake_finalize;
	f->C_GetInfo = fake_get_info;
	f->C_GetFunctionList = C_GetFunctionList;
	*pp = f;
	return CKR_OK;
#endif
}
#endif
