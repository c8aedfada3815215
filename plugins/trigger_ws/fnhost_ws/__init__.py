"""fnhost-ws: the "websocket" trigger of fnhost (event-driven functions, replies, channels)."""
