// Everything a plugin needs, in one include.
#pragma once

#include "forge/config.h"
#include "forge/decoder.h"
#include "forge/error.h"
#include "forge/logging.h"
#include "forge/modality.h"
#include "forge/moe.h"
#include "forge/nn.h"
#include "forge/plugin.h"
#include "forge/registry.h"
#include "forge/safetensors.h"
#include "forge/step_participant.h"
#include "forge/version.h"
#include "forge/vision.h"
