//go:build !linux

package main

// echoOff does nothing here: term.ReadPassword turns echo off itself, just
// after the prompt is written.
func echoOff(int) error { return nil }
