//go:build cgo && unix

package ckraw

// OutputCalls returns how many C_Encrypt, C_Decrypt and C_WrapKey calls
// ckraw has made in this process.
func OutputCalls() uint64 { return outputCalls.Load() }
