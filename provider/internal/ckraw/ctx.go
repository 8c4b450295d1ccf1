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
#include "pkcs11.h"

// Go cannot call through C function pointers; these forward to the list.
// A NULL entry (a broken module) is CKR_FUNCTION_NOT_SUPPORTED, not a crash.

static CK_RV ck_get_info(CK_FUNCTION_LIST_PTR fl, CK_INFO_PTR info) {
	return fl->C_GetInfo != NULL ? fl->C_GetInfo(info) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_get_slot_list(CK_FUNCTION_LIST_PTR fl, CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR n) {
	return fl->C_GetSlotList != NULL ? fl->C_GetSlotList(present, list, n) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_get_slot_info(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID slot, CK_SLOT_INFO_PTR info) {
	return fl->C_GetSlotInfo != NULL ? fl->C_GetSlotInfo(slot, info) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_get_token_info(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
	return fl->C_GetTokenInfo != NULL ? fl->C_GetTokenInfo(slot, info) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_get_mechanism_list(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR n) {
	return fl->C_GetMechanismList != NULL ? fl->C_GetMechanismList(slot, list, n) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_init_token(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG pinLen, CK_UTF8CHAR_PTR label) {
	return fl->C_InitToken != NULL ? fl->C_InitToken(slot, pin, pinLen, label) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_init_pin(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR pin, CK_ULONG pinLen) {
	return fl->C_InitPIN != NULL ? fl->C_InitPIN(s, pin, pinLen) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_open_session(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID slot, CK_FLAGS flags, CK_SESSION_HANDLE_PTR s) {
	return fl->C_OpenSession != NULL ? fl->C_OpenSession(slot, flags, NULL_PTR, NULL_PTR, s) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_close_session(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s) {
	return fl->C_CloseSession != NULL ? fl->C_CloseSession(s) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_get_session_info(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR info) {
	return fl->C_GetSessionInfo != NULL ? fl->C_GetSessionInfo(s, info) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_login(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_USER_TYPE u, CK_UTF8CHAR_PTR pin, CK_ULONG pinLen) {
	return fl->C_Login != NULL ? fl->C_Login(s, u, pin, pinLen) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_logout(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s) {
	return fl->C_Logout != NULL ? fl->C_Logout(s) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_create_object(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR h) {
	return fl->C_CreateObject != NULL ? fl->C_CreateObject(s, t, n, h) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_copy_object(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR h) {
	return fl->C_CopyObject != NULL ? fl->C_CopyObject(s, o, t, n, h) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_destroy_object(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o) {
	return fl->C_DestroyObject != NULL ? fl->C_DestroyObject(s, o) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_get_attribute_value(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
	return fl->C_GetAttributeValue != NULL ? fl->C_GetAttributeValue(s, o, t, n) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_set_attribute_value(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
	return fl->C_SetAttributeValue != NULL ? fl->C_SetAttributeValue(s, o, t, n) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_find_objects_init(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
	return fl->C_FindObjectsInit != NULL ? fl->C_FindObjectsInit(s, t, n) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_find_objects(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR out, CK_ULONG max, CK_ULONG_PTR n) {
	return fl->C_FindObjects != NULL ? fl->C_FindObjects(s, out, max, n) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_find_objects_final(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s) {
	return fl->C_FindObjectsFinal != NULL ? fl->C_FindObjectsFinal(s) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_generate_key(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR h) {
	return fl->C_GenerateKey != NULL ? fl->C_GenerateKey(s, m, t, n, h) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_encrypt_init(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) {
	return fl->C_EncryptInit != NULL ? fl->C_EncryptInit(s, m, k) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_decrypt_init(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) {
	return fl->C_DecryptInit != NULL ? fl->C_DecryptInit(s, m, k) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_encrypt_update(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inLen, CK_BYTE_PTR out, CK_ULONG_PTR outLen) {
	return fl->C_EncryptUpdate != NULL ? fl->C_EncryptUpdate(s, in, inLen, out, outLen) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_encrypt_final(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR outLen) {
	return fl->C_EncryptFinal != NULL ? fl->C_EncryptFinal(s, out, outLen) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_encrypt(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inLen, CK_BYTE_PTR out, CK_ULONG_PTR outLen) {
	return fl->C_Encrypt != NULL ? fl->C_Encrypt(s, in, inLen, out, outLen) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_decrypt(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inLen, CK_BYTE_PTR out, CK_ULONG_PTR outLen) {
	return fl->C_Decrypt != NULL ? fl->C_Decrypt(s, in, inLen, out, outLen) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_wrap_key(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key, CK_BYTE_PTR out, CK_ULONG_PTR outLen) {
	return fl->C_WrapKey != NULL ? fl->C_WrapKey(s, m, wrapping, key, out, outLen) : CKR_FUNCTION_NOT_SUPPORTED;
}
static CK_RV ck_unwrap_key(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE unwrapping, CK_BYTE_PTR in, CK_ULONG inLen, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR h) {
	return fl->C_UnwrapKey != NULL ? fl->C_UnwrapKey(s, m, unwrapping, in, inLen, t, n, h) : CKR_FUNCTION_NOT_SUPPORTED;
}
*/
import "C"

import (
	"fmt"
	"strings"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// Ctx is a Module seen through the methods of miekg/pkcs11's Ctx that
// hsmkeys uses, with miekg's Go signatures (mechanisms excepted: see
// Mechanism). It is the same value as its Module: every call goes through the
// one function list. Ctx is safe for concurrent use.
type Ctx Module

// Ctx returns m's miekg-style view.
func (m *Module) Ctx() *Ctx { return (*Ctx)(m) }

// Module returns the Module c views.
func (c *Ctx) Module() *Module { return (*Module)(c) }

func (c *Ctx) acquire() (C.CK_FUNCTION_LIST_PTR, func(), error) {
	m := (*Module)(c)
	fl, err := m.acquire()
	if err != nil {
		return nil, nil, err
	}
	return fl, m.mu.RUnlock, nil
}

// maxListLen bounds the slot, mechanism and object lists a module may
// report, so that a confused module cannot make us allocate without bound.
const maxListLen = 1 << 16

// GetInfo is C_GetInfo (PKCS#11 v2.40 base §5.4). Text fields are returned
// without their blank padding.
func (c *Ctx) GetInfo() (pkcs11.Info, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return pkcs11.Info{}, err
	}
	defer done()
	var in C.CK_INFO
	if rv := C.ck_get_info(fl, &in); rv != C.CKR_OK {
		return pkcs11.Info{}, toError(rv)
	}
	return pkcs11.Info{
		CryptokiVersion:    pkcs11.Version{Major: byte(in.cryptokiVersion.major), Minor: byte(in.cryptokiVersion.minor)},
		ManufacturerID:     blank(&in.manufacturerID[0], len(in.manufacturerID)),
		Flags:              uint(in.flags),
		LibraryDescription: blank(&in.libraryDescription[0], len(in.libraryDescription)),
		LibraryVersion:     pkcs11.Version{Major: byte(in.libraryVersion.major), Minor: byte(in.libraryVersion.minor)},
	}, nil
}

// GetSlotList is C_GetSlotList (PKCS#11 v2.40 base §5.5).
func (c *Ctx) GetSlotList(tokenPresent bool) ([]uint, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer done()
	present := C.CK_BBOOL(C.CK_FALSE)
	if tokenPresent {
		present = C.CK_TRUE
	}
	// The list can grow between the two calls (a token inserted): ask again
	// on CKR_BUFFER_TOO_SMALL (§5.2).
	for i := range 4 {
		if i > 0 {
			calls.Add(1)
		}
		var n C.CK_ULONG
		if rv := C.ck_get_slot_list(fl, present, nil, &n); rv != C.CKR_OK {
			return nil, toError(rv)
		}
		if n == 0 {
			return nil, nil
		}
		if n > maxListLen {
			return nil, fmt.Errorf("ckraw: module reported %d slots", uint64(n))
		}
		list := make([]C.CK_SLOT_ID, n)
		calls.Add(1)
		rv := C.ck_get_slot_list(fl, present, &list[0], &n)
		if rv == C.CKR_BUFFER_TOO_SMALL {
			continue
		}
		if rv != C.CKR_OK {
			return nil, toError(rv)
		}
		out := make([]uint, min(int(n), len(list)))
		for i := range out {
			out[i] = uint(list[i])
		}
		return out, nil
	}
	return nil, toError(C.CKR_BUFFER_TOO_SMALL)
}

// blank trims the blank padding of a fixed-size CK_UTF8CHAR field.
func blank(p *C.CK_UTF8CHAR, n int) string {
	b := C.GoBytes(unsafe.Pointer(p), C.int(n))
	return strings.TrimRight(string(b), " \x00")
}

// GetSlotInfo is C_GetSlotInfo (§5.5). Text fields are returned without
// their blank padding.
func (c *Ctx) GetSlotInfo(slotID uint) (pkcs11.SlotInfo, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return pkcs11.SlotInfo{}, err
	}
	defer done()
	var si C.CK_SLOT_INFO
	if rv := C.ck_get_slot_info(fl, C.CK_SLOT_ID(slotID), &si); rv != C.CKR_OK {
		return pkcs11.SlotInfo{}, toError(rv)
	}
	return pkcs11.SlotInfo{
		SlotDescription: blank(&si.slotDescription[0], len(si.slotDescription)),
		ManufacturerID:  blank(&si.manufacturerID[0], len(si.manufacturerID)),
		Flags:           uint(si.flags),
		HardwareVersion: pkcs11.Version{Major: byte(si.hardwareVersion.major), Minor: byte(si.hardwareVersion.minor)},
		FirmwareVersion: pkcs11.Version{Major: byte(si.firmwareVersion.major), Minor: byte(si.firmwareVersion.minor)},
	}, nil
}

// GetTokenInfo is C_GetTokenInfo (§5.5). Text fields are returned without
// their blank padding.
func (c *Ctx) GetTokenInfo(slotID uint) (pkcs11.TokenInfo, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return pkcs11.TokenInfo{}, err
	}
	defer done()
	var ti C.CK_TOKEN_INFO
	if rv := C.ck_get_token_info(fl, C.CK_SLOT_ID(slotID), &ti); rv != C.CKR_OK {
		return pkcs11.TokenInfo{}, toError(rv)
	}
	return pkcs11.TokenInfo{
		Label:              blank(&ti.label[0], len(ti.label)),
		ManufacturerID:     blank(&ti.manufacturerID[0], len(ti.manufacturerID)),
		Model:              blank(&ti.model[0], len(ti.model)),
		SerialNumber:       blank((*C.CK_UTF8CHAR)(unsafe.Pointer(&ti.serialNumber[0])), len(ti.serialNumber)),
		Flags:              uint(ti.flags),
		MaxSessionCount:    uint(ti.ulMaxSessionCount),
		SessionCount:       uint(ti.ulSessionCount),
		MaxRwSessionCount:  uint(ti.ulMaxRwSessionCount),
		RwSessionCount:     uint(ti.ulRwSessionCount),
		MaxPinLen:          uint(ti.ulMaxPinLen),
		MinPinLen:          uint(ti.ulMinPinLen),
		TotalPublicMemory:  uint(ti.ulTotalPublicMemory),
		FreePublicMemory:   uint(ti.ulFreePublicMemory),
		TotalPrivateMemory: uint(ti.ulTotalPrivateMemory),
		FreePrivateMemory:  uint(ti.ulFreePrivateMemory),
		HardwareVersion:    pkcs11.Version{Major: byte(ti.hardwareVersion.major), Minor: byte(ti.hardwareVersion.minor)},
		FirmwareVersion:    pkcs11.Version{Major: byte(ti.firmwareVersion.major), Minor: byte(ti.firmwareVersion.minor)},
		UTCTime:            blank((*C.CK_UTF8CHAR)(unsafe.Pointer(&ti.utcTime[0])), len(ti.utcTime)),
	}, nil
}

// GetMechanismList is C_GetMechanismList (§5.5); the mechanisms carry no
// parameters.
func (c *Ctx) GetMechanismList(slotID uint) ([]*pkcs11.Mechanism, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer done()
	var n C.CK_ULONG
	if rv := C.ck_get_mechanism_list(fl, C.CK_SLOT_ID(slotID), nil, &n); rv != C.CKR_OK {
		return nil, toError(rv)
	}
	if n == 0 {
		return nil, nil
	}
	if n > maxListLen {
		return nil, fmt.Errorf("ckraw: module reported %d mechanisms", uint64(n))
	}
	list := make([]C.CK_MECHANISM_TYPE, n)
	calls.Add(1)
	if rv := C.ck_get_mechanism_list(fl, C.CK_SLOT_ID(slotID), &list[0], &n); rv != C.CKR_OK {
		return nil, toError(rv)
	}
	out := make([]*pkcs11.Mechanism, min(int(n), len(list)))
	for i := range out {
		out[i] = pkcs11.NewMechanism(uint(list[i]), nil)
	}
	return out, nil
}

// InitToken is C_InitToken (§5.5). label is padded with blanks to 32 bytes.
func (c *Ctx) InitToken(slotID uint, pin string, label string) error {
	if len(label) > 32 {
		return fmt.Errorf("%w: token label of %d bytes", ErrInput, len(label))
	}
	fl, done, err := c.acquire()
	if err != nil {
		return err
	}
	defer done()
	var a arena
	defer a.free()
	p, n := a.bytes([]byte(pin))
	l := a.alloc(32)
	copy(unsafe.Slice((*byte)(l), 32), label+strings.Repeat(" ", 32-len(label)))
	return toError(C.ck_init_token(fl, C.CK_SLOT_ID(slotID), (*C.CK_UTF8CHAR)(p), C.CK_ULONG(n), (*C.CK_UTF8CHAR)(l)))
}

// InitPIN is C_InitPIN (§5.6).
func (c *Ctx) InitPIN(sh pkcs11.SessionHandle, pin string) error {
	fl, done, err := c.acquire()
	if err != nil {
		return err
	}
	defer done()
	var a arena
	defer a.free()
	p, n := a.bytes([]byte(pin))
	return toError(C.ck_init_pin(fl, C.CK_SESSION_HANDLE(sh), (*C.CK_UTF8CHAR)(p), C.CK_ULONG(n)))
}

// OpenSession is C_OpenSession (§5.6) without notification callback.
func (c *Ctx) OpenSession(slotID uint, flags uint) (pkcs11.SessionHandle, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return 0, err
	}
	defer done()
	var s C.CK_SESSION_HANDLE
	if rv := C.ck_open_session(fl, C.CK_SLOT_ID(slotID), C.CK_FLAGS(flags), &s); rv != C.CKR_OK {
		return 0, toError(rv)
	}
	return pkcs11.SessionHandle(s), nil
}

// CloseSession is C_CloseSession (§5.6).
func (c *Ctx) CloseSession(sh pkcs11.SessionHandle) error {
	fl, done, err := c.acquire()
	if err != nil {
		return err
	}
	defer done()
	return toError(C.ck_close_session(fl, C.CK_SESSION_HANDLE(sh)))
}

// GetSessionInfo is C_GetSessionInfo (§5.6).
func (c *Ctx) GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return pkcs11.SessionInfo{}, err
	}
	defer done()
	var si C.CK_SESSION_INFO
	if rv := C.ck_get_session_info(fl, C.CK_SESSION_HANDLE(sh), &si); rv != C.CKR_OK {
		return pkcs11.SessionInfo{}, toError(rv)
	}
	return pkcs11.SessionInfo{SlotID: uint(si.slotID), State: uint(si.state), Flags: uint(si.flags), DeviceError: uint(si.ulDeviceError)}, nil
}

// Login is C_Login (§5.6). The PIN's C copy is cleared after the call.
func (c *Ctx) Login(sh pkcs11.SessionHandle, userType uint, pin string) error {
	fl, done, err := c.acquire()
	if err != nil {
		return err
	}
	defer done()
	var a arena
	defer a.free()
	p, n := a.bytes([]byte(pin))
	return toError(C.ck_login(fl, C.CK_SESSION_HANDLE(sh), C.CK_USER_TYPE(userType), (*C.CK_UTF8CHAR)(p), C.CK_ULONG(n)))
}

// Logout is C_Logout (§5.6).
func (c *Ctx) Logout(sh pkcs11.SessionHandle) error {
	fl, done, err := c.acquire()
	if err != nil {
		return err
	}
	defer done()
	return toError(C.ck_logout(fl, C.CK_SESSION_HANDLE(sh)))
}

// attrs copies a miekg template into C memory. An empty template is
// (NULL, 0), which C_FindObjectsInit takes as "every object".
func (a *arena) attrs(tmpl []*pkcs11.Attribute) (C.CK_ATTRIBUTE_PTR, C.CK_ULONG, error) {
	if len(tmpl) == 0 {
		return nil, 0, nil
	}
	if len(tmpl) > maxTemplateAttrs {
		return nil, 0, fmt.Errorf("%w: template has %d attributes, more than %d", ErrTemplate, len(tmpl), maxTemplateAttrs)
	}
	// One block: the CK_ATTRIBUTE array, then every value (bytes need no
	// alignment). One C call to allocate and one to free, where a block
	// per value took two of each: a session key's template has sixteen.
	values := 0
	for _, at := range tmpl {
		if at == nil {
			return nil, 0, fmt.Errorf("%w: nil attribute", ErrTemplate)
		}
		values += len(at.Value)
	}
	head := len(tmpl) * attrSize
	base := a.alloc(head + values)
	list := unsafe.Slice((*C.CK_ATTRIBUTE)(base), len(tmpl))
	rest := unsafe.Slice((*byte)(unsafe.Add(base, head)), values)
	for i, at := range tmpl {
		list[i]._type = C.CK_ATTRIBUTE_TYPE(at.Type)
		if n := len(at.Value); n > 0 {
			copy(rest, at.Value)
			list[i].pValue = C.CK_VOID_PTR(unsafe.Pointer(&rest[0]))
			list[i].ulValueLen = C.CK_ULONG(n)
			rest = rest[n:]
		}
	}
	return &list[0], C.CK_ULONG(len(list)), nil
}

// CreateObject is C_CreateObject (§5.7).
func (c *Ctx) CreateObject(sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return 0, err
	}
	defer done()
	var a arena
	defer a.free()
	t, n, err := a.attrs(tmpl)
	if err != nil {
		return 0, err
	}
	var h C.CK_OBJECT_HANDLE
	if rv := C.ck_create_object(fl, C.CK_SESSION_HANDLE(sh), t, n, &h); rv != C.CKR_OK {
		return 0, toError(rv)
	}
	return pkcs11.ObjectHandle(h), nil
}

// CopyObject is C_CopyObject (§5.7).
func (c *Ctx) CopyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return 0, err
	}
	defer done()
	var a arena
	defer a.free()
	t, n, err := a.attrs(tmpl)
	if err != nil {
		return 0, err
	}
	var h C.CK_OBJECT_HANDLE
	if rv := C.ck_copy_object(fl, C.CK_SESSION_HANDLE(sh), C.CK_OBJECT_HANDLE(o), t, n, &h); rv != C.CKR_OK {
		return 0, toError(rv)
	}
	return pkcs11.ObjectHandle(h), nil
}

// DestroyObject is C_DestroyObject (§5.7).
func (c *Ctx) DestroyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error {
	fl, done, err := c.acquire()
	if err != nil {
		return err
	}
	defer done()
	return toError(C.ck_destroy_object(fl, C.CK_SESSION_HANDLE(sh), C.CK_OBJECT_HANDLE(o)))
}

// GetAttributeValue is C_GetAttributeValue (§5.7), as miekg makes it: one
// call for the lengths, one for the values. Only the Types of a are read.
// An attribute the object lacks or keeps secret fails the whole call with
// the token's code (CKR_ATTRIBUTE_TYPE_INVALID, CKR_ATTRIBUTE_SENSITIVE).
func (c *Ctx) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	if len(a) == 0 {
		return nil, fmt.Errorf("%w: no attributes asked for", ErrTemplate)
	}
	if len(a) > maxTemplateAttrs {
		return nil, fmt.Errorf("%w: %d attributes asked for, more than %d", ErrTemplate, len(a), maxTemplateAttrs)
	}
	fl, done, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer done()
	var ar arena
	defer ar.free()
	list := unsafe.Slice((*C.CK_ATTRIBUTE)(ar.alloc(len(a)*attrSize)), len(a))
	for i, at := range a {
		if at == nil {
			return nil, fmt.Errorf("%w: nil attribute", ErrTemplate)
		}
		list[i]._type = C.CK_ATTRIBUTE_TYPE(at.Type)
	}
	if rv := C.ck_get_attribute_value(fl, C.CK_SESSION_HANDLE(sh), C.CK_OBJECT_HANDLE(o), &list[0], C.CK_ULONG(len(list))); rv != C.CKR_OK {
		return nil, toError(rv)
	}
	for i := range list {
		n := list[i].ulValueLen
		if n == C.CK_UNAVAILABLE_INFORMATION || n > maxValueLen {
			return nil, fmt.Errorf("ckraw: attribute 0x%X: module reported length %d", uint(list[i]._type), uint(n))
		}
		if n > 0 {
			list[i].pValue = C.CK_VOID_PTR(ar.alloc(int(n)))
		}
	}
	calls.Add(1)
	if rv := C.ck_get_attribute_value(fl, C.CK_SESSION_HANDLE(sh), C.CK_OBJECT_HANDLE(o), &list[0], C.CK_ULONG(len(list))); rv != C.CKR_OK {
		return nil, toError(rv)
	}
	out := make([]*pkcs11.Attribute, len(list))
	for i, e := range list {
		at := &pkcs11.Attribute{Type: uint(e._type)}
		if e.pValue != nil && e.ulValueLen != C.CK_UNAVAILABLE_INFORMATION && e.ulValueLen > 0 {
			at.Value = C.GoBytes(unsafe.Pointer(e.pValue), C.int(e.ulValueLen))
		}
		out[i] = at
	}
	return out, nil
}

// SetAttributeValue is C_SetAttributeValue (§5.7).
func (c *Ctx) SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, tmpl []*pkcs11.Attribute) error {
	fl, done, err := c.acquire()
	if err != nil {
		return err
	}
	defer done()
	var a arena
	defer a.free()
	t, n, err := a.attrs(tmpl)
	if err != nil {
		return err
	}
	return toError(C.ck_set_attribute_value(fl, C.CK_SESSION_HANDLE(sh), C.CK_OBJECT_HANDLE(o), t, n))
}

// FindObjectsInit is C_FindObjectsInit (§5.7).
func (c *Ctx) FindObjectsInit(sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) error {
	fl, done, err := c.acquire()
	if err != nil {
		return err
	}
	defer done()
	var a arena
	defer a.free()
	t, n, err := a.attrs(tmpl)
	if err != nil {
		return err
	}
	return toError(C.ck_find_objects_init(fl, C.CK_SESSION_HANDLE(sh), t, n))
}

// FindObjects is C_FindObjects (§5.7): at most max handles. The bool is
// always false, as in miekg.
func (c *Ctx) FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error) {
	if max < 1 || max > maxListLen {
		return nil, false, fmt.Errorf("%w: C_FindObjects: max %d out of range [1, %d]", ErrInput, max, maxListLen)
	}
	fl, done, err := c.acquire()
	if err != nil {
		return nil, false, err
	}
	defer done()
	list := make([]C.CK_OBJECT_HANDLE, max)
	var n C.CK_ULONG
	if rv := C.ck_find_objects(fl, C.CK_SESSION_HANDLE(sh), &list[0], C.CK_ULONG(max), &n); rv != C.CKR_OK {
		return nil, false, toError(rv)
	}
	out := make([]pkcs11.ObjectHandle, min(int(n), max))
	for i := range out {
		out[i] = pkcs11.ObjectHandle(list[i])
	}
	return out, false, nil
}

// FindObjectsFinal is C_FindObjectsFinal (§5.7).
func (c *Ctx) FindObjectsFinal(sh pkcs11.SessionHandle) error {
	fl, done, err := c.acquire()
	if err != nil {
		return err
	}
	defer done()
	return toError(C.ck_find_objects_final(fl, C.CK_SESSION_HANDLE(sh)))
}

// GenerateKey is C_GenerateKey (§5.14).
func (c *Ctx) GenerateKey(sh pkcs11.SessionHandle, m []*Mechanism, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return 0, err
	}
	defer done()
	var a arena
	defer a.free()
	cm, err := a.mechanism(m)
	if err != nil {
		return 0, err
	}
	t, n, err := a.attrs(tmpl)
	if err != nil {
		return 0, err
	}
	var h C.CK_OBJECT_HANDLE
	if rv := C.ck_generate_key(fl, C.CK_SESSION_HANDLE(sh), cm, t, n, &h); rv != C.CKR_OK {
		return 0, toError(rv)
	}
	return pkcs11.ObjectHandle(h), nil
}

// EncryptInit is C_EncryptInit (§5.8).
func (c *Ctx) EncryptInit(sh pkcs11.SessionHandle, m []*Mechanism, o pkcs11.ObjectHandle) error {
	fl, done, err := c.acquire()
	if err != nil {
		return err
	}
	defer done()
	var a arena
	defer a.free()
	cm, err := a.mechanism(m)
	if err != nil {
		return err
	}
	return toError(C.ck_encrypt_init(fl, C.CK_SESSION_HANDLE(sh), cm, C.CK_OBJECT_HANDLE(o)))
}

// DecryptInit is C_DecryptInit (§5.9).
func (c *Ctx) DecryptInit(sh pkcs11.SessionHandle, m []*Mechanism, o pkcs11.ObjectHandle) error {
	fl, done, err := c.acquire()
	if err != nil {
		return err
	}
	defer done()
	var a arena
	defer a.free()
	cm, err := a.mechanism(m)
	if err != nil {
		return err
	}
	return toError(C.ck_decrypt_init(fl, C.CK_SESSION_HANDLE(sh), cm, C.CK_OBJECT_HANDLE(o)))
}

// sized makes a variable-length output call as miekg does (§5.2): a
// NULL buffer for the size, then a buffer of that size.
func sized(call func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV) ([]byte, error) {
	var n C.CK_ULONG
	if rv := call(nil, &n); rv != C.CKR_OK {
		return nil, toError(rv)
	}
	if uint64(n) > MaxOutput {
		return nil, fmt.Errorf("ckraw: module asked for a %d-byte output buffer", uint64(n))
	}
	calls.Add(1) // acquire counted the size query
	return variable(int(n), call)
}

// Encrypt is C_Encrypt (§5.8) with a size query first; see Module.Encrypt
// for the single call.
func (c *Ctx) Encrypt(sh pkcs11.SessionHandle, in []byte) ([]byte, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer done()
	p, n := nonNil(in)
	return sized(func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV {
		return C.ck_encrypt(fl, C.CK_SESSION_HANDLE(sh), p, n, out, outLen)
	})
}

// Decrypt is C_Decrypt (§5.9) with a size query first.
func (c *Ctx) Decrypt(sh pkcs11.SessionHandle, in []byte) ([]byte, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer done()
	p, n := nonNil(in)
	return sized(func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV {
		return C.ck_decrypt(fl, C.CK_SESSION_HANDLE(sh), p, n, out, outLen)
	})
}

// EncryptUpdate is C_EncryptUpdate (§5.8) with a size query first.
func (c *Ctx) EncryptUpdate(sh pkcs11.SessionHandle, in []byte) ([]byte, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer done()
	p, n := nonNil(in)
	return sized(func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV {
		return C.ck_encrypt_update(fl, C.CK_SESSION_HANDLE(sh), p, n, out, outLen)
	})
}

// emptyIn gives empty input a non-NULL pointer (see ckraw_in in single.go).
var emptyIn = []byte{0}

func nonNil(in []byte) (C.CK_BYTE_PTR, C.CK_ULONG) {
	if len(in) == 0 {
		return (C.CK_BYTE_PTR)(unsafe.Pointer(&emptyIn[0])), 0
	}
	return inBytes(in)
}

// EncryptFinal is C_EncryptFinal (§5.8) with a size query first.
func (c *Ctx) EncryptFinal(sh pkcs11.SessionHandle) ([]byte, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer done()
	return sized(func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV {
		return C.ck_encrypt_final(fl, C.CK_SESSION_HANDLE(sh), out, outLen)
	})
}

// WrapKey is C_WrapKey (§5.14) with a size query first, for mechanisms with
// parameters (RSA-OAEP); see Module.WrapKey for the single call.
func (c *Ctx) WrapKey(sh pkcs11.SessionHandle, m []*Mechanism, wrappingKey, key pkcs11.ObjectHandle) ([]byte, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer done()
	var a arena
	defer a.free()
	cm, err := a.mechanism(m)
	if err != nil {
		return nil, err
	}
	return sized(func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV {
		return C.ck_wrap_key(fl, C.CK_SESSION_HANDLE(sh), cm, C.CK_OBJECT_HANDLE(wrappingKey), C.CK_OBJECT_HANDLE(key), out, outLen)
	})
}

// UnwrapKey is C_UnwrapKey (§5.14). An empty wrapped key is refused before
// the call (miekg panics on one).
func (c *Ctx) UnwrapKey(sh pkcs11.SessionHandle, m []*Mechanism, unwrappingKey pkcs11.ObjectHandle, wrapped []byte, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if len(wrapped) == 0 || len(wrapped) > MaxOutput {
		return 0, fmt.Errorf("%w: C_UnwrapKey: wrapped key of %d bytes", ErrInput, len(wrapped))
	}
	fl, done, err := c.acquire()
	if err != nil {
		return 0, err
	}
	defer done()
	var a arena
	defer a.free()
	cm, err := a.mechanism(m)
	if err != nil {
		return 0, err
	}
	t, n, err := a.attrs(tmpl)
	if err != nil {
		return 0, err
	}
	p, pn := a.bytes(wrapped)
	var h C.CK_OBJECT_HANDLE
	rv := C.ck_unwrap_key(fl, C.CK_SESSION_HANDLE(sh), cm, C.CK_OBJECT_HANDLE(unwrappingKey), (C.CK_BYTE_PTR)(p), C.CK_ULONG(pn), t, n, &h)
	if rv != C.CKR_OK {
		return 0, toError(rv)
	}
	return pkcs11.ObjectHandle(h), nil
}

// EncryptUpdateCap is C_EncryptUpdate in one call with an output buffer of
// outCap bytes (the size query of EncryptUpdate is a round trip to a
// networked HSM). On CKR_BUFFER_TOO_SMALL, which leaves the operation
// active (PKCS#11 v2.40 base §5.2), it calls again with the size the module
// asked for. For AES-GCM and AES-CTR outCap = len(in)+16 is always enough
// (a module returns at most the input plus one buffered block).
func (c *Ctx) EncryptUpdateCap(sh pkcs11.SessionHandle, in []byte, outCap int) ([]byte, error) {
	if err := checkCap("C_EncryptUpdate", outCap); err != nil {
		return nil, err
	}
	fl, done, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer done()
	p, n := nonNil(in)
	return variable(outCap, func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV {
		return C.ck_encrypt_update(fl, C.CK_SESSION_HANDLE(sh), p, n, out, outLen)
	})
}

// EncryptUpdateIn is EncryptUpdateCap writing into buf (its length is the
// capacity; at least 1 byte): the result aliases buf unless the module
// asked for more room. For streams that consume each part before the
// next, so that a gigabyte does not leave a gigabyte of garbage.
func (c *Ctx) EncryptUpdateIn(sh pkcs11.SessionHandle, in, buf []byte) ([]byte, error) {
	if len(buf) == 0 || len(buf) > MaxOutput {
		return nil, fmt.Errorf("%w: C_EncryptUpdate: output buffer of %d bytes", ErrInput, len(buf))
	}
	fl, done, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer done()
	p, n := nonNil(in)
	return variableIn(buf, len(buf), func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV {
		return C.ck_encrypt_update(fl, C.CK_SESSION_HANDLE(sh), p, n, out, outLen)
	})
}

// EncryptFinalCap is C_EncryptFinal in one call with an output buffer of
// outCap bytes, as EncryptUpdateCap. AES-GCM: one block and the tag (32
// bytes) is always enough.
func (c *Ctx) EncryptFinalCap(sh pkcs11.SessionHandle, outCap int) ([]byte, error) {
	if err := checkCap("C_EncryptFinal", outCap); err != nil {
		return nil, err
	}
	fl, done, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer done()
	return variable(outCap, func(out C.CK_BYTE_PTR, outLen *C.CK_ULONG) C.CK_RV {
		return C.ck_encrypt_final(fl, C.CK_SESSION_HANDLE(sh), out, outLen)
	})
}

// GetAttributeValueCap is GetAttributeValue in one call when the caller
// knows how large each value is (caps[i] bytes for a[i]: 1 for a CK_BBOOL,
// 8 for a CK_ULONG, 3 for an AES CKA_CHECK_VALUE). A value larger than its
// buffer makes the module answer CKR_BUFFER_TOO_SMALL (PKCS#11 v2.40 base
// §5.7); then the values are asked for again as GetAttributeValue does, a
// size query first. A value shorter than its buffer comes back at its own
// length (an empty CKA_CHECK_VALUE is empty).
func (c *Ctx) GetAttributeValueCap(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute, caps []int) ([]*pkcs11.Attribute, error) {
	if len(a) == 0 || len(caps) != len(a) {
		return nil, fmt.Errorf("%w: %d attributes and %d sizes asked for", ErrTemplate, len(a), len(caps))
	}
	if len(a) > maxTemplateAttrs {
		return nil, fmt.Errorf("%w: %d attributes asked for, more than %d", ErrTemplate, len(a), maxTemplateAttrs)
	}
	out, tooSmall, err := c.getAttributesOnce(sh, o, a, caps)
	if tooSmall {
		return c.GetAttributeValue(sh, o, a)
	}
	return out, err
}

func (c *Ctx) getAttributesOnce(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute, caps []int) ([]*pkcs11.Attribute, bool, error) {
	fl, done, err := c.acquire()
	if err != nil {
		return nil, false, err
	}
	defer done()
	var ar arena
	defer ar.free()
	list := unsafe.Slice((*C.CK_ATTRIBUTE)(ar.alloc(len(a)*attrSize)), len(a))
	for i, at := range a {
		if at == nil {
			return nil, false, fmt.Errorf("%w: nil attribute", ErrTemplate)
		}
		if caps[i] <= 0 || caps[i] > maxValueLen {
			return nil, false, fmt.Errorf("%w: attribute 0x%X: buffer of %d bytes", ErrTemplate, at.Type, caps[i])
		}
		list[i]._type = C.CK_ATTRIBUTE_TYPE(at.Type)
		list[i].pValue = C.CK_VOID_PTR(ar.alloc(caps[i]))
		list[i].ulValueLen = C.CK_ULONG(caps[i])
	}
	rv := C.ck_get_attribute_value(fl, C.CK_SESSION_HANDLE(sh), C.CK_OBJECT_HANDLE(o), &list[0], C.CK_ULONG(len(list)))
	if rv == C.CKR_BUFFER_TOO_SMALL {
		return nil, true, nil
	}
	if rv != C.CKR_OK {
		return nil, false, toError(rv)
	}
	out := make([]*pkcs11.Attribute, len(list))
	for i, e := range list {
		at := &pkcs11.Attribute{Type: uint(e._type)}
		n := e.ulValueLen
		if n == C.CK_UNAVAILABLE_INFORMATION || uint64(n) > uint64(caps[i]) {
			return nil, false, fmt.Errorf("ckraw: attribute 0x%X: module reported length %d in a %d-byte buffer", uint(e._type), uint64(n), caps[i])
		}
		if n > 0 {
			at.Value = C.GoBytes(unsafe.Pointer(e.pValue), C.int(n))
		}
		out[i] = at
	}
	return out, false, nil
}
