//! rallymq-websocket (in progress)
