// Owner of the precompiled header (see forge_pch.h).
