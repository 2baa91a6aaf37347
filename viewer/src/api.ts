// HDF REST reads through the viewer server's proxy (same origin: no CORS, no
// credentials in the page). Paths are relative so the page works under any prefix.
// The proxy pins the domain, so requests carry no ?domain=.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export interface ViewerConfig {
  domain: string;
  endpoint: string;
  control: boolean;
}

export interface HdfType {
  class: string;
  base?: string;
}

export interface HdfObject {
  id: string;
  collection: 'groups' | 'datasets';
  path: string;
  shape: number[]; // [] for scalars
  type?: HdfType;
}

export type ObjectMap = Map<string, HdfObject>;

const REQUEST_TIMEOUT_MS = 10_000;

async function errorMessage(response: Response): Promise<string> {
  // Our server and the proxy answer {"status", "message"}; HSDS and aiohttp may
  // answer plain text: show whichever there is, else the status line.
  const text = await response.text().catch(() => '');
  try {
    const body = JSON.parse(text) as { message?: unknown };
    if (typeof body.message === 'string' && body.message) return body.message;
  } catch {
    /* not JSON */
  }
  return text.trim() || `${response.status} ${response.statusText}`;
}

async function request(url: string, init: RequestInit = {}): Promise<Response> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  let response: Response;
  try {
    response = await fetch(url, { ...init, signal: controller.signal, cache: 'no-store' });
  } catch (error) {
    // The viewer server itself is gone (the proxy answers 502 when only the endpoint is).
    const why = controller.signal.aborted ? 'timed out' : String(error);
    throw new ApiError(0, `the viewer server does not answer (${why})`);
  } finally {
    clearTimeout(timer);
  }
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return response;
}

/** Status of an answer the page cannot use (not JSON, a type it cannot decode): not
 *  an unreachable server, which is what a status of 0 says. */
export const UNEXPECTED = -1;

export async function getJson<T>(url: string): Promise<T> {
  const response = await request(url, { headers: { Accept: 'application/json' } });
  const text = await response.text();
  try {
    return JSON.parse(text) as T;
  } catch {
    // A login page of a proxy in front of the endpoint, say.
    throw new ApiError(UNEXPECTED, `${url.split('?')[0]} answered ${response.headers.get('Content-Type') ?? 'no type'}, not JSON`);
  }
}

// JSON, never text/plain: the viewer server refuses any other body, so a page on
// another site (which cannot send application/json without a CORS preflight that
// is never granted) cannot change the pipeline through it.
export async function postValue(url: string, value: string): Promise<unknown> {
  return (await request(url, { method: 'POST', body: JSON.stringify({ value }), headers: { 'Content-Type': 'application/json' } })).json();
}

export function loadViewerConfig(): Promise<ViewerConfig> {
  return getJson<ViewerConfig>('viewer.json');
}

// -- object map ----------------------------------------------------------------------
interface RawLink {
  id?: string;
  title?: string;
}
interface RawObject {
  id?: string;
  links?: Record<string, RawLink> | RawLink[];
  shape?: { class: string; dims?: number[] };
  type?: HdfType;
}
interface DomainBody {
  root: string;
  domain_objs?: Record<string, RawObject>;
}

function linkList(links: RawObject['links']): RawLink[] {
  if (!links) return [];
  return Array.isArray(links) ? links : Object.entries(links).map(([title, l]) => ({ title, ...l }));
}

/** Every object's path, id, shape and type: one request where the server answers
 *  getobjs (ours, HSDS), else a walk over the groups' links. */
export async function loadObjects(): Promise<ObjectMap> {
  const body = await getJson<DomainBody>('hdf/?getobjs=1&include_attrs=0');
  const fetchObject = async (collection: string, id: string): Promise<RawObject> =>
    body.domain_objs?.[id] ?? getJson<RawObject>(`hdf/${collection}/${id}?include_links=1`);
  const out: ObjectMap = new Map();
  const visit = async (path: string, collection: 'groups' | 'datasets', id: string): Promise<void> => {
    const obj = await fetchObject(collection, id);
    const dims = obj.shape?.class === 'H5S_SIMPLE' ? (obj.shape.dims ?? []) : [];
    out.set(path, { id, collection, path, shape: dims, type: obj.type });
    if (collection !== 'groups') return;
    let links = linkList(obj.links);
    if (!obj.links) links = (await getJson<{ links: RawLink[] }>(`hdf/groups/${id}/links`)).links;
    // Hard links only; the id's prefix names the collection (g-, d-), as h5pyd reads it.
    const children = links.flatMap((l) => {
      const kind = l.id?.startsWith('g-') ? 'groups' : l.id?.startsWith('d-') ? 'datasets' : null;
      return kind && l.title ? [{ title: l.title, id: l.id!, kind }] : [];
    });
    await Promise.all(children.map((c) => visit(`${path === '/' ? '' : path}/${c.title}`, c.kind as 'groups' | 'datasets', c.id)));
  };
  await visit('/', 'groups', body.root);
  return out;
}

// -- values ---------------------------------------------------------------------------
export type NumericArray = Float32Array | Float64Array | Int32Array | Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array;

function decode(buffer: ArrayBuffer, type: HdfType | undefined): NumericArray {
  // HDF REST binary is little-endian, as is every browser we target.
  switch (type?.base) {
    case 'H5T_IEEE_F32LE':
      return new Float32Array(buffer);
    case 'H5T_IEEE_F64LE':
      return new Float64Array(buffer);
    case 'H5T_STD_I32LE':
      return new Int32Array(buffer);
    case 'H5T_STD_U32LE':
      return new Uint32Array(buffer);
    case 'H5T_STD_I16LE':
      return new Int16Array(buffer);
    case 'H5T_STD_U16LE':
      return new Uint16Array(buffer);
    case 'H5T_STD_I8LE':
      return new Int8Array(buffer);
    case 'H5T_STD_U8LE':
      return new Uint8Array(buffer);
    case 'H5T_STD_I64LE':
      // Counts and row numbers: exact below 2^53, so plain numbers are fine.
      return Float64Array.from(new BigInt64Array(buffer), Number);
    case 'H5T_STD_U64LE':
      return Float64Array.from(new BigUint64Array(buffer), Number);
    default:
      throw new ApiError(UNEXPECTED, `cannot decode type ${JSON.stringify(type)} in binary`);
  }
}

/** A hyperslab in binary (``select`` in HDF REST syntax, e.g. ``[3:4,:,:]``). */
export async function readBinary(obj: HdfObject, select?: string): Promise<NumericArray> {
  const query = select ? `?select=${encodeURIComponent(select)}` : '';
  const response = await request(`hdf/datasets/${obj.id}/value${query}`, {
    headers: { Accept: 'application/octet-stream' },
  });
  return decode(await response.arrayBuffer(), obj.type);
}

/** Scalars and strings: small, so JSON. */
export async function readValue(obj: HdfObject): Promise<unknown> {
  return (await getJson<{ value: unknown }>(`hdf/datasets/${obj.id}/value`)).value;
}
