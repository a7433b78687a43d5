//! Integration tests of cortex-engines (one binary).
