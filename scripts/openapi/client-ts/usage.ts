// A client's use of the API, compiled (never run) against types generated from
// openapi.json. Each line stands for something clients rely on: if the contract changes
// under it, this file stops compiling.
import type { components, paths, webhooks } from "./schema";

type Schemas = components["schemas"];
type Json<T> = T extends { content: { "application/json": infer B } } ? B : never;

// Sign in: the request body and the tokens in the answer.
type LoginBody = Json<paths["/api/v1/auth/login"]["post"]["requestBody"]>;
type LoginAnswer = Json<paths["/api/v1/auth/login"]["post"]["responses"]["200"]>;
export const login: LoginBody = { email: "ann@example.com", password: "a-long-password" };
export function bearer(answer: LoginAnswer): string {
  return `Bearer ${answer.data.token}`;
}
export function expiresInSeconds(answer: LoginAnswer): number {
  return answer.data.expiresIn;
}

// Place an order: its lines and shipping address, and the order that comes back.
type OrderBody = Json<paths["/api/v1/orders"]["post"]["requestBody"]>;
type Order = Json<paths["/api/v1/orders"]["post"]["responses"]["201"]>["data"];
export const order: OrderBody = {
  items: [{ productId: "0190a0e2-0000-7000-8000-000000000000", quantity: 2 }],
  shippingAddress: { line1: "1 Main St", city: "Springfield", postalCode: "12345", country: "US" },
};
export function total(o: Order): { cents: number; currency: string } {
  return { cents: o.totalCents, currency: o.currency };
}
export const statuses: Schemas["OrderStatus"][] = ["pending", "paid", "shipped", "delivered", "cancelled"];

// Lists: page mode has a total, cursor mode a next cursor.
type ProductPage = Json<paths["/api/v1/products"]["get"]["responses"]["200"]>;
export function nextPage(page: ProductPage): string | null | undefined {
  return page.pagination.nextCursor;
}
export function names(page: ProductPage): string[] {
  return page.data.map((p) => `${p.name} (${p.priceCents})`);
}

// The order's history.
type History = Json<paths["/api/v1/orders/{id}/events"]["get"]["responses"]["200"]>;
export function lastEvent(h: History): string | undefined {
  return h.data.at(-1)?.type;
}

// Errors: one envelope, and codes a client matches on.
type ErrorCode = Schemas["ErrorBody"]["code"];
export function retryable(code: ErrorCode): boolean {
  switch (code) {
    case "RATE_LIMITED":
    case "SERVICE_UNAVAILABLE":
    case "IDEMPOTENCY_KEY_IN_USE":
      return true;
    case "EMAIL_NOT_VERIFIED":
    case "INSUFFICIENT_STOCK":
    case "TOO_MANY_PENDING_ORDERS":
    case "VALIDATION_ERROR":
      return false;
    default:
      return false;
  }
}
export function message(e: Schemas["ErrorEnvelope"]): string {
  return `${e.error.code}: ${e.error.message}`;
}

// The caller's profile says whether the address is confirmed.
type Profile = Json<paths["/api/v1/users/profile"]["get"]["responses"]["200"]>;
export function mustVerify(p: Profile): boolean {
  return !p.data.emailVerified;
}

// Receive a webhook: the event's type and the order it carries (after the signature is
// verified with a Standard Webhooks library).
type Delivery = Json<webhooks["order.paid"]["post"]["requestBody"]>;
export function paidOrder(d: Delivery): { event: Schemas["WebhookEventType"]; order: string; cents: number } {
  return { event: d.type, order: d.data.id, cents: d.data.totalCents };
}
