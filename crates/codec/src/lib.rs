//! rallymq-codec (in progress)
