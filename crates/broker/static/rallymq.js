// The rallymq browser client is not built yet: it arrives with the browser-client work.
export const version = '0.0.0';
