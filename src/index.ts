// Ferry's public TypeScript API.
export {};
