// Package pkcs11h holds the one copy of the OASIS PKCS#11 v2.40 headers
// (pkcs11.h, pkcs11f.h, pkcs11t.h, as github.com/miekg/pkcs11 v1.1.2 ships
// them, their licence notices kept) that the project's C code compiles
// against: provider/internal/ckraw through its cgo CFLAGS, and the test
// module internal/faultmod through Headers.
package pkcs11h

import "embed"

// Headers are the three header files, at the root of the FS.
//
//go:embed pkcs11.h pkcs11f.h pkcs11t.h
var Headers embed.FS
