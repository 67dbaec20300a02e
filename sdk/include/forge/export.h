// Symbol visibility. forge compiles everything with hidden visibility; the
// core exports its API (and every SDK interface, so their typeinfo and vtables
// have one home) with FORGE_API. Plugins export only their entry symbol.
#pragma once

#define FORGE_API __attribute__((visibility("default")))
