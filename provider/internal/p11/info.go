package p11

// CKInfo is the module's whole C_GetInfo answer (PKCS#11 v2.40 base §5.4,
// CK_INFO), text without its blank padding, for "hsmkeys version".
type CKInfo struct {
	CryptokiMajor, CryptokiMinor byte
	Manufacturer                 string
	Description                  string
	LibraryMajor, LibraryMinor   byte
}

// CKInfo is C_GetInfo.
func (m *Module) CKInfo() (CKInfo, error) {
	in, err := m.ctx.GetInfo()
	if err != nil {
		return CKInfo{}, wrapErr("C_GetInfo", err)
	}
	return CKInfo{
		CryptokiMajor: in.CryptokiVersion.Major, CryptokiMinor: in.CryptokiVersion.Minor,
		Manufacturer: in.ManufacturerID, Description: in.LibraryDescription,
		LibraryMajor: in.LibraryVersion.Major, LibraryMinor: in.LibraryVersion.Minor,
	}, nil
}
