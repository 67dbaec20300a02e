// forge versions. Three numbers, each with its own rule (docs/abi.md):
//  - the SDK's semantic version (headers + libforge_core API);
//  - the plugin ABI integer: bumped on any change to an interface's layout or
//    virtual table; plugins must match it exactly, and it is part of the entry
//    symbol's name (forge_plugin_v<ABI>);
//  - the checkpoint schema version: bumped when the on-disk checkpoint layout
//    changes.
#pragma once

#define FORGE_SDK_VERSION_MAJOR 0
#define FORGE_SDK_VERSION_MINOR 8
#define FORGE_SDK_VERSION_PATCH 0
#define FORGE_SDK_VERSION_STRING "0.8.0"

#define FORGE_PLUGIN_ABI 5
#define FORGE_PLUGIN_ENTRY forge_plugin_v5
#define FORGE_PLUGIN_ENTRY_NAME "forge_plugin_v5"

#define FORGE_CHECKPOINT_SCHEMA 1

namespace forge {
inline constexpr int kPluginAbi = FORGE_PLUGIN_ABI;
inline constexpr int kCheckpointSchema = FORGE_CHECKPOINT_SCHEMA;
inline constexpr const char* kSdkVersion = FORGE_SDK_VERSION_STRING;
}  // namespace forge
