//go:build !cgo || !unix

package ckraw

// hsmkeys loads PKCS#11 modules with dlopen through cgo.
var _ = hsmkeys_requires_cgo_and_dlopen // see README.md, "Building": CGO_ENABLED=1, a C compiler, a Unix dlopen
