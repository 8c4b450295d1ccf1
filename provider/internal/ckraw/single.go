//go:build cgo && unix

package ckraw

/*
// The same platform macros as in ckraw.go; every cgo preamble is compiled
// on its own.
#define CK_PTR *
#ifndef NULL_PTR
#define NULL_PTR 0
#endif
#define CK_DEFINE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType (* name)
#define CK_CALLBACK_FUNCTION(returnType, name) returnType (* name)

#include <stdlib.h>
#include "pkcs11.h"

// A non-NULL pointer for empty input: some modules (SoftHSM) answer
// CKR_ARGUMENTS_BAD to a NULL data pointer even with a length of 0. Modules
// only read input, so one shared byte is enough.
static CK_BYTE ckraw_empty_in[1];

static CK_BYTE_PTR ckraw_in(CK_BYTE_PTR p) {
	return p != NULL_PTR ? p : ckraw_empty_in;
}

static CK_RV ckraw_encrypt(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s,
		CK_BYTE_PTR in, CK_ULONG inLen, CK_BYTE_PTR out, CK_ULONG_PTR outLen) {
	return fl->C_Encrypt != NULL ? fl->C_Encrypt(s, ckraw_in(in), inLen, out, outLen) : CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV ckraw_decrypt(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s,
		CK_BYTE_PTR in, CK_ULONG inLen, CK_BYTE_PTR out, CK_ULONG_PTR outLen) {
	return fl->C_Decrypt != NULL ? fl->C_Decrypt(s, ckraw_in(in), inLen, out, outLen) : CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV ckraw_wrap_key(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s,
		CK_MECHANISM_TYPE mech, CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key,
		CK_BYTE_PTR out, CK_ULONG_PTR outLen) {
	CK_MECHANISM m = { mech, NULL_PTR, 0 };
	return fl->C_WrapKey != NULL ? fl->C_WrapKey(s, &m, wrapping, key, out, outLen) : CKR_FUNCTION_NOT_SUPPORTED;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// ErrInput is wrapped by every error about a buffer argument (an output
// capacity) that ckraw refuses before calling the token.
var ErrInput = errors.New("ckraw: invalid input")

// MaxOutput is the largest output buffer Encrypt, Decrypt and WrapKey
// allocate, whether the caller asks for it or the module does.
const MaxOutput = 1 << 30

// outputCalls counts the C calls made by Encrypt, Decrypt and WrapKey, so
// that tests can check that one call was enough.
var outputCalls atomic.Uint64

// calls counts every PKCS#11 call made through ckraw after a module's
// C_Initialize (acquire counts one per method; the methods that make more
// count the others), for Calls.
var calls atomic.Uint64

// Calls returns the number of PKCS#11 calls this process has made through
// ckraw, on every module, since it started, C_GetFunctionList,
// C_Initialize and C_Finalize excepted. One atomic add per call: cheap
// enough to keep on. On a networked HSM each call is a round trip.
func Calls() uint64 { return calls.Load() }

// Encrypt calls C_Encrypt once with an output buffer of outCap bytes. The
// operation must have been started on the session, for example by miekg's
// EncryptInit. If the token answers CKR_BUFFER_TOO_SMALL, which leaves the
// operation active (PKCS#11 v2.40 base §5.2, "Conventions for functions
// returning output in a variable-length buffer"), Encrypt calls again with
// the size the token reported. It returns exactly the bytes written.
//
// Expected sizes: AES-GCM len(in)+tagBytes, AES-ECB and AES-CTR len(in).
//
// in is passed to the module without a copy and must not be modified during
// the call. If the error wraps ErrInput, the token was not called and the
// operation is still active; any other error ends it (§5.2).
func (m *Module) Encrypt(session uint, in []byte, outCap int) ([]byte, error) {
	if err := checkCap("C_Encrypt", outCap); err != nil {
		return nil, err
	}
	fl, err := m.acquire()
	if err != nil {
		return nil, err
	}
	defer m.mu.RUnlock()
	p, n := inBytes(in)
	return variable(outCap, func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV {
		return C.ckraw_encrypt(fl, C.CK_SESSION_HANDLE(session), p, n, out, outLen)
	})
}

// Decrypt is Encrypt for C_Decrypt. On any error the output buffer is
// cleared, so that no partial plaintext of a failed authentication stays in
// memory; a tag mismatch comes back as the token's error (SoftHSM:
// CKR_GENERAL_ERROR).
//
// BUG(ckraw): SoftHSM 2.6.1 asks for an output buffer as large as the whole
// input (len(in), tag included) before it decrypts, although AES-GCM
// plaintext is len(in)-16 bytes: with outCap = len(in)-16, Decrypt makes two
// C_Decrypt calls. Pass outCap = len(in) to get one.
func (m *Module) Decrypt(session uint, in []byte, outCap int) ([]byte, error) {
	if err := checkCap("C_Decrypt", outCap); err != nil {
		return nil, err
	}
	fl, err := m.acquire()
	if err != nil {
		return nil, err
	}
	defer m.mu.RUnlock()
	p, n := inBytes(in)
	return variable(outCap, func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV {
		return C.ckraw_decrypt(fl, C.CK_SESSION_HANDLE(session), p, n, out, outLen)
	})
}

// WrapKey calls C_WrapKey once with a mechanism that takes no parameter
// (CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD) and an output buffer of outCap
// bytes, with the same CKR_BUFFER_TOO_SMALL fallback as Encrypt. Expected
// sizes for a key of n bytes: AES-KW (RFC 3394) n+8, AES-KWP (RFC 5649)
// 8 + n rounded up to a multiple of 8.
func (m *Module) WrapKey(session, mech, wrappingKey, key uint, outCap int) ([]byte, error) {
	if err := checkCap("C_WrapKey", outCap); err != nil {
		return nil, err
	}
	fl, err := m.acquire()
	if err != nil {
		return nil, err
	}
	defer m.mu.RUnlock()
	return variable(outCap, func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV {
		return C.ckraw_wrap_key(fl, C.CK_SESSION_HANDLE(session), C.CK_MECHANISM_TYPE(mech),
			C.CK_OBJECT_HANDLE(wrappingKey), C.CK_OBJECT_HANDLE(key), out, outLen)
	})
}

func checkCap(fn string, outCap int) error {
	if outCap < 0 || outCap > MaxOutput {
		return fmt.Errorf("%w: %s: output capacity %d out of range [0, %d]", ErrInput, fn, outCap, MaxOutput)
	}
	return nil
}

// inBytes returns a pointer to in's first byte, or NULL for an empty in (the
// C side substitutes a non-NULL pointer).
//
// Passing Go memory is allowed by the cgo pointer rules because a []byte
// holds no Go pointers, and PKCS#11 modules do not keep the pointer after a
// single-part call returns. It saves a copy of up to 64 MiB, and a C copy of
// the plaintext that would need scrubbing.
func inBytes(in []byte) (C.CK_BYTE_PTR, C.CK_ULONG) {
	if len(in) == 0 {
		return nil, 0
	}
	return (C.CK_BYTE_PTR)(unsafe.Pointer(&in[0])), C.CK_ULONG(len(in))
}

// variable runs call with a buffer of outCap bytes and, on
// CKR_BUFFER_TOO_SMALL, once more with the size the module asked for.
//
// The output buffer is Go memory, written by the module during the call
// (allowed for the same reason as in inBytes): the result needs no copy
// out of C memory, and no C buffer ever holds plaintext. A buffer that may
// hold output of a failed call is cleared.
func variable(outCap int, call func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV) ([]byte, error) {
	// A NULL output pointer asks for the size only (§5.2), so even a
	// 0-byte buffer must have an address.
	return variableIn(make([]byte, max(outCap, 1)), outCap, call)
}

// variableIn is variable with the caller's buffer (len(buf) >= max(outCap,
// 1)); the result aliases buf unless the module asked for more room.
func variableIn(buf []byte, outCap int, call func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV) ([]byte, error) {
	n := C.CK_ULONG(outCap)
	outputCalls.Add(1)
	rv := call((C.CK_BYTE_PTR)(unsafe.Pointer(&buf[0])), &n)
	if rv == C.CKR_BUFFER_TOO_SMALL {
		// §5.2: nothing was written and the operation is still active.
		clear(buf)
		if uint64(n) <= uint64(outCap) || uint64(n) > MaxOutput {
			return nil, fmt.Errorf("ckraw: module asked for a %d-byte buffer after refusing %d bytes: %w", uint64(n), outCap, toError(rv))
		}
		outCap = int(n)
		buf = make([]byte, outCap)
		outputCalls.Add(1)
		calls.Add(1) // acquire counted the first call
		rv = call((C.CK_BYTE_PTR)(unsafe.Pointer(&buf[0])), &n)
	}
	if rv != C.CKR_OK {
		clear(buf)
		return nil, toError(rv)
	}
	if uint64(n) > uint64(outCap) {
		clear(buf)
		return nil, fmt.Errorf("ckraw: module reported %d bytes of output in a %d-byte buffer", uint64(n), outCap)
	}
	return buf[:n:n], nil
}
