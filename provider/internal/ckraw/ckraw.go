//go:build cgo && unix

// Package ckraw is hsmkeys' binding to a PKCS#11 module: the only code that
// dlopen()s a module, calls its C_GetFunctionList and C_Initialize, and calls
// through the function list it returned.
//
// One binding per module instance. PKCS#11 v2.40 base §5.4 (C_GetFunctionList)
// lets a library hand each caller its own function list, and p11-kit's
// proxy does: a second C_GetFunctionList returns a new, uninitialised
// instance whose sessions are not the first one's. So every Open of a
// library that is already open here (whatever the path spelling: dlopen
// returns the same handle for the same loaded object) gets the instance of
// the first Open, with its function list and its C_Initialize, and nothing
// in hsmkeys calls C_GetFunctionList anywhere else. The instance is
// finalised and dlclose()d when the last Module on it is closed. Another
// library in the process that loads the same module on its own (crypto11,
// miekg/pkcs11) is another instance and beyond our control; a module that
// is a process-wide singleton (SoftHSM) then answers our C_Initialize with
// CKR_CRYPTOKI_ALREADY_INITIALIZED, which Open accepts, and Close never
// finalises what it did not initialise.
//
// Ctx is the view of a Module with the methods of miekg/pkcs11's Ctx that
// hsmkeys uses, with the same Go signatures, taking and returning miekg's
// Attribute and handle types; mechanisms are this package's Mechanism,
// because miekg keeps the parameters of its own unexported. Module's own
// methods pass templates containing other templates (CKA_WRAP_TEMPLATE,
// CKA_UNWRAP_TEMPLATE), which miekg v1.1.2 cannot marshal (its NewAttribute
// panics on a []*Attribute value), and make single-call Encrypt, Decrypt and
// WrapKey: miekg makes two C calls for each (a size query, then the real
// call), a round trip more on a networked HSM.
//
// A Module is safe for concurrent use. PKCS#11 rules about using one session
// from several goroutines at once are the caller's business, as with miekg.
//
// Token errors are returned as pkcs11.Error (the CKR_* value), exactly as miekg
// returns them. Invalid input is rejected before the token is called, with an
// error that wraps ErrTemplate (templates) or ErrInput (buffer sizes); calls
// on a closed Module return ErrClosed; a library that cannot be loaded gives
// an error wrapping ErrLoad with the loader's reason.
//
// BUG(ckraw): SoftHSM 2.6.1 does not fill a key's CKA_UNWRAP_TEMPLATE into
// the C_UnwrapKey template: the caller must repeat every attribute of it with
// the same value (CKA_TOKEN and CKA_PRIVATE excepted, which SoftHSM always
// supplies), or the unwrap fails with CKR_TEMPLATE_INCONSISTENT. Other tokens
// may merge instead.
package ckraw

/*
#cgo CFLAGS: -I${SRCDIR}/../../../internal/pkcs11h
#cgo linux LDFLAGS: -ldl
#cgo freebsd LDFLAGS: -ldl
#cgo darwin LDFLAGS: -ldl

// Platform macros required before including pkcs11.h (see the top of
// pkcs11.h), defined as miekg/pkcs11's pkcs11go.h does for Unix.
#define CK_PTR *
#ifndef NULL_PTR
#define NULL_PTR 0
#endif
#define CK_DEFINE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType (* name)
#define CK_CALLBACK_FUNCTION(returnType, name) returnType (* name)

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "pkcs11.h"

// ckraw_dlerror copies dlerror()'s text into buf before any further dl call
// can free or overwrite it.
static void ckraw_dlerror(char *buf, size_t n) {
	const char *e = dlerror();
	snprintf(buf, n, "%s", e != NULL ? e : "unknown error");
}

// ckraw_dlopen loads path. RTLD_NOW: a module with unresolved symbols fails
// here, with the loader's reason, instead of at its first call. RTLD_LOCAL:
// its symbols do not leak into the process (two modules may both export
// C_Initialize). A library already loaded gives the same handle again.
static void *ckraw_dlopen(const char *path, char *errbuf, size_t errlen) {
	void *h;
	errbuf[0] = 0;
	dlerror();
	h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		ckraw_dlerror(errbuf, errlen);
	}
	return h;
}

// ckraw_get_function_list calls the module's C_GetFunctionList (PKCS#11
// v2.40 base §5.4). It returns 0 on success, 2 if the library has no
// C_GetFunctionList (errbuf holds dlerror()'s text), 3 if it failed (*rv)
// or returned CKR_OK with a NULL list.
static int ckraw_get_function_list(void *h, CK_FUNCTION_LIST_PTR *fl, CK_RV *rv, char *errbuf, size_t errlen) {
	CK_C_GetFunctionList get;
	CK_FUNCTION_LIST_PTR list = NULL;

	*fl = NULL;
	*rv = CKR_OK;
	errbuf[0] = 0;
	dlerror();
	get = (CK_C_GetFunctionList) dlsym(h, "C_GetFunctionList");
	if (get == NULL) {
		ckraw_dlerror(errbuf, errlen);
		return 2;
	}
	*rv = get(&list);
	if (*rv != CKR_OK || list == NULL) {
		return 3;
	}
	*fl = list;
	return 0;
}

// ckraw_initialize calls C_Initialize with CKF_OS_LOCKING_OK (the module may
// use the operating system's locks: Go calls it from many threads) and the
// module-specific pReserved string, NULL when empty (PKCS#11 v2.40 base §5.4,
// CK_C_INITIALIZE_ARGS; NSS softoken reads its configuration there).
static CK_RV ckraw_initialize(CK_FUNCTION_LIST_PTR fl, char *reserved) {
	CK_C_INITIALIZE_ARGS args;
	memset(&args, 0, sizeof args);
	args.flags = CKF_OS_LOCKING_OK;
	args.pReserved = reserved;
	if (fl->C_Initialize == NULL) {
		return CKR_FUNCTION_FAILED;
	}
	return fl->C_Initialize(&args);
}

static CK_RV ckraw_finalize(CK_FUNCTION_LIST_PTR fl) {
	if (fl->C_Finalize == NULL) {
		return CKR_OK;
	}
	return fl->C_Finalize(NULL_PTR);
}

static int ckraw_close(void *handle, char *errbuf, size_t errlen) {
	errbuf[0] = 0;
	if (dlclose(handle) != 0) {
		ckraw_dlerror(errbuf, errlen);
		return 1;
	}
	return 0;
}

// Go cannot call through C function pointers; these forward to the list.
// A NULL entry (a broken module) is CKR_FUNCTION_NOT_SUPPORTED, not a crash.

static CK_RV ckraw_create_object(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s,
		CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR h) {
	return fl->C_CreateObject != NULL ? fl->C_CreateObject(s, t, n, h) : CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV ckraw_generate_key(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s,
		CK_MECHANISM_TYPE mech, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR h) {
	CK_MECHANISM m = { mech, NULL_PTR, 0 };
	return fl->C_GenerateKey != NULL ? fl->C_GenerateKey(s, &m, t, n, h) : CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV ckraw_generate_key_pair(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s,
		CK_MECHANISM_TYPE mech, CK_ATTRIBUTE_PTR pub, CK_ULONG npub,
		CK_ATTRIBUTE_PTR priv, CK_ULONG npriv, CK_OBJECT_HANDLE_PTR hpub, CK_OBJECT_HANDLE_PTR hpriv) {
	CK_MECHANISM m = { mech, NULL_PTR, 0 };
	return fl->C_GenerateKeyPair != NULL ? fl->C_GenerateKeyPair(s, &m, pub, npub, priv, npriv, hpub, hpriv) : CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV ckraw_get_attribute_value(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s,
		CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
	return fl->C_GetAttributeValue != NULL ? fl->C_GetAttributeValue(s, o, t, n) : CKR_FUNCTION_NOT_SUPPORTED;
}
*/
import "C"

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unsafe"

	"github.com/miekg/pkcs11"
)

var (
	// ErrClosed is returned by every method of a closed (or nil) Module.
	ErrClosed = errors.New("ckraw: module closed")
	// ErrTemplate is wrapped by every error about a template or attribute
	// value that ckraw refuses before calling the token.
	ErrTemplate = errors.New("ckraw: invalid template")
)

// Limits on what GetTemplate accepts from a module, so that a confused
// module cannot make us allocate without bound.
const (
	maxTemplateAttrs = 256
	maxValueLen      = 64 << 10
)

const (
	attrSize  = C.sizeof_CK_ATTRIBUTE
	ulongSize = C.sizeof_CK_ULONG
	bboolSize = C.sizeof_CK_BBOOL
)

// Attr is one attribute of a template.
//
// Value is one of: bool (encoded as a 1-byte CK_BBOOL), uint (a CK_ULONG),
// []byte or string (copied as is), or []Attr for an array attribute such as
// CKA_UNWRAP_TEMPLATE. A []Attr may itself contain no []Attr: one level of
// nesting is all PKCS#11 needs for key templates.
//
// Values returned by GetTemplate are []byte, in the token's encoding; use
// Bool and Ulong to decode them.
type Attr struct {
	Type  uint
	Value any
}

// Bool returns the attribute as a CK_BBOOL. ok is false unless Value is a
// bool or a 1-byte []byte.
func (a Attr) Bool() (v, ok bool) {
	switch x := a.Value.(type) {
	case bool:
		return x, true
	case []byte:
		if len(x) == bboolSize {
			return x[0] != C.CK_FALSE, true
		}
	}
	return false, false
}

// Ulong returns the attribute as a CK_ULONG. ok is false unless Value is a
// uint or a []byte of exactly sizeof(CK_ULONG) bytes, which is decoded in the
// host's byte order (the order the module wrote it in).
func (a Attr) Ulong() (v uint, ok bool) {
	switch x := a.Value.(type) {
	case uint:
		return x, true
	case []byte:
		if len(x) == ulongSize {
			switch ulongSize {
			case 8:
				return uint(binary.NativeEndian.Uint64(x)), true
			case 4:
				return uint(binary.NativeEndian.Uint32(x)), true
			}
		}
	}
	return 0, false
}

// instance is one loaded, initialised module: one dlopen handle, the one
// function list its C_GetFunctionList gave, one C_Initialize.
type instance struct {
	handle   unsafe.Pointer
	fl       C.CK_FUNCTION_LIST_PTR
	path     string  // as first opened, for messages
	initArgs string  // C_Initialize's pReserved
	reserved *C.char // the same in C memory, kept while initialised; nil if empty
	owner    bool    // our C_Initialize succeeded, so Close finalises
	refs     int     // open Modules; guarded by instances
}

// instances maps a dlopen handle to its instance: the whole process has one
// binding per loaded module.
var instances = struct {
	sync.Mutex
	m map[unsafe.Pointer]*instance
}{m: map[unsafe.Pointer]*instance{}}

// Module is one user's reference to a module instance. Modules opened on
// the same library share the instance.
type Module struct {
	mu   sync.RWMutex // write-held by Close, read-held by calls
	inst *instance    // nil once closed
	fl   C.CK_FUNCTION_LIST_PTR
}

var (
	// ErrLoad is wrapped by every error about a library that cannot be
	// loaded: no such file, the loader's refusal, no C_GetFunctionList, or a
	// C_GetFunctionList that failed.
	ErrLoad = errors.New("cannot load pkcs11 module")
	// ErrInitArgs means the library is open already with other
	// C_Initialize arguments: one instance has one configuration.
	ErrInitArgs = errors.New("pkcs11 module already initialised with other arguments")
)

// Options are how Open initialises a module.
type Options struct {
	// InitArgs is passed as CK_C_INITIALIZE_ARGS.pReserved, for modules
	// that read their configuration there (NSS softoken:
	// "configdir='sql:/path' certPrefix='' keyPrefix='' secmod='secmod.db'
	// flags=..."). Empty means NULL.
	InitArgs string
}

// Open returns a Module on the library at path, loading and initialising it
// if this process has not: dlopen (RTLD_NOW|RTLD_LOCAL), C_GetFunctionList
// and C_Initialize (CKF_OS_LOCKING_OK and opts.InitArgs), each once per
// loaded library. CKR_CRYPTOKI_ALREADY_INITIALIZED is accepted: another
// part of the process initialised a singleton module first (PKCS#11 v2.40
// base §5.4); such a module is then never finalised by Close.
//
// Opening a library that is open already gives its instance, whatever
// path names it; with InitArgs other than the first Open's, the error wraps
// ErrInitArgs.
func Open(path string, opts Options) (*Module, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: empty module path", ErrLoad)
	}
	if strings.IndexByte(path, 0) >= 0 || strings.IndexByte(opts.InitArgs, 0) >= 0 {
		return nil, fmt.Errorf("%w: module path or initialisation arguments contain a NUL byte", ErrLoad)
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	errbuf := (*C.char)(C.malloc(errBufLen))
	defer C.free(unsafe.Pointer(errbuf))

	instances.Lock()
	defer instances.Unlock()
	h := C.ckraw_dlopen(cpath, errbuf, errBufLen)
	if h == nil {
		msg := C.GoString(errbuf)
		if !strings.Contains(msg, path) {
			msg = path + ": " + msg
		}
		return nil, fmt.Errorf("%w: %s", ErrLoad, msg)
	}
	if in, ok := instances.m[h]; ok {
		// The instance holds its own reference from its first dlopen.
		C.ckraw_close(h, errbuf, errBufLen)
		if in.initArgs != opts.InitArgs {
			return nil, fmt.Errorf("%w: %s (opened as %s)", ErrInitArgs, path, in.path)
		}
		in.refs++
		return &Module{inst: in, fl: in.fl}, nil
	}
	in := &instance{handle: h, path: path, initArgs: opts.InitArgs}
	var rv C.CK_RV
	switch C.ckraw_get_function_list(h, &in.fl, &rv, errbuf, errBufLen) {
	case 0:
	case 2:
		msg := C.GoString(errbuf)
		C.ckraw_close(h, errbuf, errBufLen)
		return nil, fmt.Errorf("%w: %s is not a PKCS#11 module: %s", ErrLoad, path, msg)
	default:
		C.ckraw_close(h, errbuf, errBufLen)
		if rv == C.CKR_OK {
			return nil, fmt.Errorf("%w: %s: C_GetFunctionList returned CKR_OK and no function list", ErrLoad, path)
		}
		return nil, fmt.Errorf("%w: %s: C_GetFunctionList: %w", ErrLoad, path, toError(rv))
	}
	if opts.InitArgs != "" {
		in.reserved = C.CString(opts.InitArgs)
	}
	switch rv := C.ckraw_initialize(in.fl, in.reserved); rv {
	case C.CKR_OK:
		in.owner = true
	case C.CKR_CRYPTOKI_ALREADY_INITIALIZED:
	default:
		in.free()
		C.ckraw_close(h, errbuf, errBufLen)
		return nil, initError{err: toError(rv)}
	}
	in.refs = 1
	instances.m[h] = in
	return &Module{inst: in, fl: in.fl}, nil
}

// initError is a failed C_Initialize; it unwraps to the pkcs11.Error.
type initError struct{ err error }

func (e initError) Error() string { return "C_Initialize: " + e.err.Error() }
func (e initError) Unwrap() error { return e.err }

// IsInitError reports whether err is Open's C_Initialize failure (as
// opposed to a library that could not be loaded).
func IsInitError(err error) bool {
	var ie initError
	return errors.As(err, &ie)
}

func (in *instance) free() {
	if in.reserved != nil {
		C.free(unsafe.Pointer(in.reserved))
		in.reserved = nil
	}
}

const errBufLen = 512

// Close drops this Module's reference; the last one on an instance calls
// C_Finalize (if our C_Initialize succeeded) and dlcloses the library. It
// waits for this Module's calls in flight and is idempotent.
func (m *Module) Close() error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	in := m.inst
	if in == nil {
		return nil
	}
	m.inst, m.fl = nil, nil

	instances.Lock()
	defer instances.Unlock()
	if in.refs--; in.refs > 0 {
		return nil
	}
	delete(instances.m, in.handle)
	var err error
	if in.owner {
		if rv := C.ckraw_finalize(in.fl); rv != C.CKR_OK && rv != C.CKR_CRYPTOKI_NOT_INITIALIZED {
			err = fmt.Errorf("C_Finalize: %w", toError(rv))
		}
	}
	in.free()
	errbuf := (*C.char)(C.malloc(errBufLen))
	defer C.free(unsafe.Pointer(errbuf))
	if C.ckraw_close(in.handle, errbuf, errBufLen) != 0 {
		err = errors.Join(err, fmt.Errorf("ckraw: dlclose: %s", C.GoString(errbuf)))
	}
	in.fl, in.handle = nil, nil
	return err
}

// Owner reports whether this process's C_Initialize of the module was ours
// (false: another part of the process had initialised it).
func (m *Module) Owner() bool {
	if m == nil {
		return false
	}
	m.mu.RLock() // not acquire: no PKCS#11 call to count
	defer m.mu.RUnlock()
	return m.fl != nil && m.inst.owner
}

// acquire read-locks m and returns its function list, or ErrClosed. The
// caller must call m.mu.RUnlock when err is nil.
func (m *Module) acquire() (C.CK_FUNCTION_LIST_PTR, error) {
	if m == nil {
		return nil, ErrClosed
	}
	m.mu.RLock()
	if m.fl == nil {
		m.mu.RUnlock()
		return nil, ErrClosed
	}
	calls.Add(1) // the call the caller makes now; see Calls for the others
	return m.fl, nil
}

// CreateObject calls C_CreateObject with tmpl, which may contain nested
// templates, and returns the new object's handle.
func (m *Module) CreateObject(session uint, tmpl []Attr) (uint, error) {
	fl, err := m.acquire()
	if err != nil {
		return 0, err
	}
	defer m.mu.RUnlock()

	var a arena
	defer a.free()
	t, n, err := a.template(tmpl, "template", false)
	if err != nil {
		return 0, err
	}
	var h C.CK_OBJECT_HANDLE
	if rv := C.ckraw_create_object(fl, C.CK_SESSION_HANDLE(session), t, n, &h); rv != C.CKR_OK {
		return 0, toError(rv)
	}
	return uint(h), nil
}

// GenerateKey calls C_GenerateKey with a mechanism that takes no parameter
// (such as CKM_AES_KEY_GEN) and returns the new key's handle.
func (m *Module) GenerateKey(session, mech uint, tmpl []Attr) (uint, error) {
	fl, err := m.acquire()
	if err != nil {
		return 0, err
	}
	defer m.mu.RUnlock()

	var a arena
	defer a.free()
	t, n, err := a.template(tmpl, "template", false)
	if err != nil {
		return 0, err
	}
	var h C.CK_OBJECT_HANDLE
	rv := C.ckraw_generate_key(fl, C.CK_SESSION_HANDLE(session), C.CK_MECHANISM_TYPE(mech), t, n, &h)
	if rv != C.CKR_OK {
		return 0, toError(rv)
	}
	return uint(h), nil
}

// GenerateKeyPair calls C_GenerateKeyPair with a mechanism that takes no
// parameter (such as CKM_RSA_PKCS_KEY_PAIR_GEN). Both templates are required.
func (m *Module) GenerateKeyPair(session, mech uint, pub, priv []Attr) (pubH, privH uint, err error) {
	fl, err := m.acquire()
	if err != nil {
		return 0, 0, err
	}
	defer m.mu.RUnlock()

	var a arena
	defer a.free()
	pt, pn, err := a.template(pub, "public template", false)
	if err != nil {
		return 0, 0, err
	}
	vt, vn, err := a.template(priv, "private template", false)
	if err != nil {
		return 0, 0, err
	}
	var hp, hv C.CK_OBJECT_HANDLE
	rv := C.ckraw_generate_key_pair(fl, C.CK_SESSION_HANDLE(session), C.CK_MECHANISM_TYPE(mech), pt, pn, vt, vn, &hp, &hv)
	if rv != C.CKR_OK {
		return 0, 0, toError(rv)
	}
	return uint(hp), uint(hv), nil
}

// GetTemplate reads the array attribute attrType (CKA_WRAP_TEMPLATE,
// CKA_UNWRAP_TEMPLATE, ...) of object. Every returned Value is a []byte as
// the token stores it; decode with Attr.Bool and Attr.Ulong. An object whose
// template is empty yields an empty, non-nil slice.
//
// Reading an array attribute takes three C_GetAttributeValue calls
// (PKCS#11 v2.40 base §5.7, C_GetAttributeValue, applied to the array
// attributes of §4.8-4.10; v3.0 spells the procedure out): pValue NULL gives
// the array's size in bytes; an array of CK_ATTRIBUTE with NULL pValues gives
// each element's type and length; an array with buffers gives the values.
func (m *Module) GetTemplate(session, object, attrType uint) ([]Attr, error) {
	if attrType&C.CKF_ARRAY_ATTRIBUTE == 0 {
		return nil, fmt.Errorf("%w: attribute 0x%X is not an array attribute", ErrTemplate, attrType)
	}
	fl, err := m.acquire()
	if err != nil {
		return nil, err
	}
	defer m.mu.RUnlock()

	var a arena
	defer a.free()
	outer := (*C.CK_ATTRIBUTE)(a.alloc(attrSize))
	outer._type = C.CK_ATTRIBUTE_TYPE(attrType)
	first := true
	get := func() error {
		if !first {
			calls.Add(1) // acquire counted the first
		}
		first = false
		rv := C.ckraw_get_attribute_value(fl, C.CK_SESSION_HANDLE(session), C.CK_OBJECT_HANDLE(object), outer, 1)
		return toError(rv)
	}

	// 1. Size of the array in bytes.
	if err := get(); err != nil {
		return nil, err
	}
	size := outer.ulValueLen
	if size == C.CK_UNAVAILABLE_INFORMATION || size%attrSize != 0 {
		return nil, fmt.Errorf("ckraw: attribute 0x%X: module reported length %d, not an array of CK_ATTRIBUTE", attrType, uint(size))
	}
	count := int(size / attrSize)
	if count == 0 {
		return []Attr{}, nil
	}
	if count > maxTemplateAttrs {
		return nil, fmt.Errorf("ckraw: attribute 0x%X: module reported %d attributes, more than %d", attrType, count, maxTemplateAttrs)
	}

	// 2. Types and lengths of the elements.
	list := unsafe.Slice((*C.CK_ATTRIBUTE)(a.alloc(count*attrSize)), count)
	outer.pValue = C.CK_VOID_PTR(unsafe.Pointer(&list[0]))
	outer.ulValueLen = size
	if err := get(); err != nil {
		return nil, err
	}

	// 3. Values.
	for i := range list {
		n := list[i].ulValueLen
		if n == C.CK_UNAVAILABLE_INFORMATION || n > maxValueLen {
			return nil, fmt.Errorf("ckraw: attribute 0x%X: element 0x%X: module reported length %d", attrType, uint(list[i]._type), uint(n))
		}
		list[i].pValue = nil
		if n > 0 {
			list[i].pValue = C.CK_VOID_PTR(a.alloc(int(n)))
		}
	}
	outer.ulValueLen = size
	if err := get(); err != nil {
		return nil, err
	}

	out := make([]Attr, count)
	for i, e := range list {
		v := []byte{}
		if e.ulValueLen > 0 && e.pValue != nil {
			v = C.GoBytes(unsafe.Pointer(e.pValue), C.int(e.ulValueLen))
		}
		out[i] = Attr{Type: uint(e._type), Value: v}
	}
	return out, nil
}

func toError(rv C.CK_RV) error {
	if rv == C.CKR_OK {
		return nil
	}
	return pkcs11.Error(rv)
}

// arena owns C memory for one call. free scrubs and releases all of it:
// templates can carry key material (CKA_VALUE in C_CreateObject).
type arena struct {
	ptrs  []unsafe.Pointer
	sizes []int
}

// alloc returns n zeroed bytes of C memory (n > 0): one C call (calloc),
// not two, since every cgo call costs: a session key's template takes
// sixteen of these. Out of C memory is fatal, as for C.malloc.
func (a *arena) alloc(n int) unsafe.Pointer {
	p := C.calloc(1, C.size_t(n))
	if p == nil {
		panic("ckraw: out of C memory")
	}
	a.ptrs = append(a.ptrs, p)
	a.sizes = append(a.sizes, n)
	return p
}

// free scrubs each block from Go (no cgo call; the free that follows is an
// opaque call, so the stores are not dropped) and frees it.
func (a *arena) free() {
	for i, p := range a.ptrs {
		clear(unsafe.Slice((*byte)(p), a.sizes[i]))
		C.free(p)
	}
	a.ptrs, a.sizes = nil, nil
}

// template copies tmpl into an array of CK_ATTRIBUTE in C memory. where names
// the template in errors. nested is true for the contents of an array
// attribute, which may not nest further.
//
// Array attributes (CKF_ARRAY_ATTRIBUTE, pkcs11t.h) hold an array of
// CK_ATTRIBUTE; ulValueLen is the array's size in bytes, so the element count
// is ulValueLen / sizeof(CK_ATTRIBUTE) (PKCS#11 v2.40 base, CKA_WRAP_TEMPLATE
// and CKA_UNWRAP_TEMPLATE in §4.8 public, §4.9 private and §4.10 secret key
// objects).
func (a *arena) template(tmpl []Attr, where string, nested bool) (C.CK_ATTRIBUTE_PTR, C.CK_ULONG, error) {
	if len(tmpl) == 0 {
		return nil, 0, fmt.Errorf("%w: %s is empty", ErrTemplate, where)
	}
	if len(tmpl) > maxTemplateAttrs {
		return nil, 0, fmt.Errorf("%w: %s has %d attributes, more than %d", ErrTemplate, where, len(tmpl), maxTemplateAttrs)
	}
	list := unsafe.Slice((*C.CK_ATTRIBUTE)(a.alloc(len(tmpl)*attrSize)), len(tmpl))
	for i, at := range tmpl {
		var (
			p unsafe.Pointer
			n int
		)
		switch v := at.Value.(type) {
		case bool:
			p, n = a.alloc(bboolSize), bboolSize
			*(*C.CK_BBOOL)(p) = C.CK_FALSE
			if v {
				*(*C.CK_BBOOL)(p) = C.CK_TRUE
			}
		case uint:
			// CK_ULONG is unsigned long, the width of a Go uint on every
			// Unix ABI (LP64, ILP32); miekg makes the same assumption.
			p, n = a.alloc(ulongSize), ulongSize
			*(*C.CK_ULONG)(p) = C.CK_ULONG(v)
		case []byte:
			p, n = a.bytes(v)
		case string:
			p, n = a.bytes([]byte(v))
		case []Attr:
			if nested {
				return nil, 0, fmt.Errorf("%w: %s: attribute 0x%X: templates nest one level deep at most", ErrTemplate, where, at.Type)
			}
			if at.Type&C.CKF_ARRAY_ATTRIBUTE == 0 {
				return nil, 0, fmt.Errorf("%w: %s: attribute 0x%X is not an array attribute (CKF_ARRAY_ATTRIBUTE) and cannot hold a template", ErrTemplate, where, at.Type)
			}
			sub, cnt, err := a.template(v, fmt.Sprintf("%s: attribute 0x%X", where, at.Type), true)
			if err != nil {
				return nil, 0, err
			}
			p, n = unsafe.Pointer(sub), int(cnt)*attrSize
		default:
			return nil, 0, fmt.Errorf("%w: %s: attribute 0x%X: unsupported value type %T", ErrTemplate, where, at.Type, at.Value)
		}
		list[i]._type = C.CK_ATTRIBUTE_TYPE(at.Type)
		list[i].pValue = C.CK_VOID_PTR(p)
		list[i].ulValueLen = C.CK_ULONG(n)
	}
	return &list[0], C.CK_ULONG(len(list)), nil
}

// bytes copies b into C memory; an empty b is (NULL, 0).
func (a *arena) bytes(b []byte) (unsafe.Pointer, int) {
	if len(b) == 0 {
		return nil, 0
	}
	p := a.alloc(len(b))
	copy(unsafe.Slice((*byte)(p), len(b)), b)
	return p, len(b)
}
