//go:build cgo && unix

package ckraw

/*
#define CK_PTR *
#ifndef NULL_PTR
#define NULL_PTR 0
#endif
#define CK_DEFINE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType (* name)
#define CK_CALLBACK_FUNCTION(returnType, name) returnType (* name)

#include <stdlib.h>
#include <string.h>
#include "pkcs11.h"
*/
import "C"

import (
	"fmt"
	"sync"
	"unsafe"
)

// Mechanism is a mechanism type with its parameter, for Ctx's methods. It
// replaces miekg's Mechanism, whose structured parameters (GCM, OAEP) are
// unexported and can only be marshalled by miekg's own Ctx.
type Mechanism struct {
	Mechanism uint
	// Parameter is a parameter without pointers, copied as is (for example
	// CK_AES_CTR_PARAMS); unused when the mechanism was made with
	// *GCMParams or *OAEPParams.
	Parameter []byte
	gcm       *GCMParams
	oaep      *OAEPParams
	bad       string // the type NewMechanism was given instead of a parameter
}

// NewMechanism returns a mechanism with parameter x: nil, []byte, *GCMParams
// or *OAEPParams. Any other type gives a mechanism that every call refuses
// with ErrInput (miekg panics instead).
func NewMechanism(mech uint, x any) *Mechanism {
	m := &Mechanism{Mechanism: mech}
	switch p := x.(type) {
	case nil:
	case []byte:
		m.Parameter = p
	case *GCMParams:
		m.gcm = p
	case *OAEPParams:
		m.oaep = p
	default:
		m.bad = fmt.Sprintf("%T", x)
	}
	return m
}

// GCMParams are CK_GCM_PARAMS (PKCS#11 v2.40 mechanisms §2.12.3). They live
// in C memory from the first call that uses them until Free, because some
// HSMs write the IV they chose into pIv during the operation (CloudHSM), and
// some read the parameters until the operation ends: call Free after
// Encrypt/EncryptFinal or Decrypt. Free is idempotent.
type GCMParams struct {
	mu      sync.Mutex
	iv, aad []byte
	tagBits int
	c       *C.CK_GCM_PARAMS // nil until marshalled, and after Free
	a       arena
}

// NewGCMParams is miekg's NewGCMParams: tagSize is in bits.
func NewGCMParams(iv, aad []byte, tagSize int) *GCMParams {
	return &GCMParams{iv: iv, aad: aad, tagBits: tagSize}
}

// cparams returns the C copy, making it on first use.
func (p *GCMParams) cparams() (unsafe.Pointer, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.c == nil {
		// One block: the struct, then the IV, then the AAD (bytes need no
		// alignment): one C call to allocate and one to free, not three
		// of each, on every GCM operation.
		head := int(C.sizeof_CK_GCM_PARAMS)
		base := p.a.alloc(head + len(p.iv) + len(p.aad))
		c := (*C.CK_GCM_PARAMS)(base)
		rest := unsafe.Slice((*byte)(unsafe.Add(base, head)), len(p.iv)+len(p.aad))
		if n := len(p.iv); n > 0 {
			copy(rest, p.iv)
			c.pIv = C.CK_BYTE_PTR(unsafe.Pointer(&rest[0]))
			c.ulIvLen = C.CK_ULONG(n)
			c.ulIvBits = C.CK_ULONG(n * 8)
		}
		if n := len(p.aad); n > 0 {
			copy(rest[len(p.iv):], p.aad)
			c.pAAD = C.CK_BYTE_PTR(unsafe.Pointer(&rest[len(p.iv)]))
			c.ulAADLen = C.CK_ULONG(n)
		}
		c.ulTagBits = C.CK_ULONG(p.tagBits)
		p.c = c
	}
	return unsafe.Pointer(p.c), C.sizeof_CK_GCM_PARAMS
}

// IV returns the IV the parameters hold now: the caller's, or the one the
// token wrote. Nil before the first use and after Free.
func (p *GCMParams) IV() []byte {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.c == nil || p.c.pIv == nil {
		return nil
	}
	return C.GoBytes(unsafe.Pointer(p.c.pIv), C.int(p.c.ulIvLen))
}

// Free releases the C copy.
func (p *GCMParams) Free() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.a.free()
	p.c = nil
}

// OAEPParams are CK_RSA_PKCS_OAEP_PARAMS (PKCS#11 v2.40 mechanisms §2.1.8).
type OAEPParams struct {
	HashAlg    uint
	MGF        uint
	SourceType uint
	SourceData []byte
}

// NewOAEPParams is miekg's NewOAEPParams.
func NewOAEPParams(hashAlg, mgf, sourceType uint, sourceData []byte) *OAEPParams {
	return &OAEPParams{HashAlg: hashAlg, MGF: mgf, SourceType: sourceType, SourceData: sourceData}
}

// mechanism copies the one mechanism of m into a (miekg's Ctx takes a
// slice of exactly one, and panics on any other length).
func (a *arena) mechanism(m []*Mechanism) (*C.CK_MECHANISM, error) {
	if len(m) != 1 || m[0] == nil {
		return nil, fmt.Errorf("%w: want exactly one mechanism, have %d", ErrInput, len(m))
	}
	mech := m[0]
	cm := (*C.CK_MECHANISM)(a.alloc(C.sizeof_CK_MECHANISM))
	cm.mechanism = C.CK_MECHANISM_TYPE(mech.Mechanism)
	var (
		p unsafe.Pointer
		n int
	)
	switch {
	case mech.bad != "":
		return nil, fmt.Errorf("%w: mechanism 0x%X: parameter of type %s", ErrInput, mech.Mechanism, mech.bad)
	case mech.gcm != nil:
		p, n = mech.gcm.cparams()
	case mech.oaep != nil:
		c := (*C.CK_RSA_PKCS_OAEP_PARAMS)(a.alloc(C.sizeof_CK_RSA_PKCS_OAEP_PARAMS))
		c.hashAlg = C.CK_MECHANISM_TYPE(mech.oaep.HashAlg)
		c.mgf = C.CK_RSA_PKCS_MGF_TYPE(mech.oaep.MGF)
		c.source = C.CK_RSA_PKCS_OAEP_SOURCE_TYPE(mech.oaep.SourceType)
		if sd, sn := a.bytes(mech.oaep.SourceData); sn > 0 {
			c.pSourceData = C.CK_VOID_PTR(sd)
			c.ulSourceDataLen = C.CK_ULONG(sn)
		}
		p, n = unsafe.Pointer(c), C.sizeof_CK_RSA_PKCS_OAEP_PARAMS
	default:
		p, n = a.bytes(mech.Parameter)
	}
	cm.pParameter = C.CK_VOID_PTR(p)
	cm.ulParameterLen = C.CK_ULONG(n)
	return cm, nil
}
